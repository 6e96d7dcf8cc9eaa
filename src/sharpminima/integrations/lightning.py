"""A PyTorch Lightning callback that measures the landscape during ``Trainer.fit``.

Install with ``pip install 'sharpminima[lightning]'``::

    from sharpminima.integrations.lightning import SharpnessCallback

    callback = SharpnessCallback(held_loader, ["keskar_sharpness", "hessian_eigenvalues"],
                                 every_n_epochs=5)
    trainer = lightning.Trainer(max_epochs=20, callbacks=[callback])
    trainer.fit(module, train_loader)
    callback.history  # [(epoch, {label: result}), ...]

Every ``every_n_epochs`` epochs and at the end of ``fit`` the chosen measures are taken at
the module's current weights on the held data and logged through the trainer's loggers
(``sharpminima/<measure>`` metrics at the global step). Measuring leaves the training
state as it was (see :mod:`sharpminima.integrations.measuring`). The module is called as
``module(inputs)`` by the default cross-entropy loss; give ``loss=fn(module, batch)`` for
anything else (a LightningModule's own loss, a regression). Only global rank 0 measures
when training is distributed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - the extra is not installed
    from sharpminima.errors import ConfigError

    raise ConfigError("the Lightning callback needs the extra: pip install 'sharpminima[lightning]'") from exc

from sharpminima.integrations.measuring import MeasureSchedule, MeasureSpec, log_results


class SharpnessCallback(MeasureSchedule, pl.Callback):
    """Measure chosen quantities every N epochs and at the end of ``fit``.

    Args:
        data: Held data (a DataLoader of fixed batches, a list of batches, or tensors).
        measures: Measure names or ``(name, params)`` pairs (see ``sharpminima measure --help``).
        every_n_epochs: Measure after every N-th training epoch (0: only at the end).
        at_end: Also measure at the end of ``fit``.
        loss: The loss (default: cross-entropy of ``module(inputs)``).
        bn_mode: ``"eval"`` (default) or ``"batch"``.
        prefix: Prefix of the logged metric names.

    Attributes:
        history: ``(epoch, {label: result})`` per measurement, in order.
    """

    def __init__(
        self,
        data: Any,
        measures: Sequence[MeasureSpec] = ("keskar_sharpness",),
        *,
        every_n_epochs: int = 1,
        at_end: bool = True,
        loss: Any = None,
        bn_mode: str = "eval",
        prefix: str = "sharpminima/",
    ) -> None:
        super().__init__()
        self._schedule(data, measures, every_n_epochs, at_end, loss, bn_mode, prefix)

    def _measure(self, trainer: pl.Trainer, module: pl.LightningModule, epoch: int) -> None:
        if trainer.global_rank != 0:
            return
        results = self._take(module, epoch)
        for logger in trainer.loggers:
            log_results(results, logger, step=trainer.global_step, prefix=self.prefix)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure after every N-th epoch."""
        epoch = trainer.current_epoch + 1
        if self.due(epoch):
            self._measure(trainer, pl_module, epoch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure at the end of training (unless the last epoch was just measured)."""
        epoch = trainer.current_epoch
        if self._end_due(epoch):
            self._measure(trainer, pl_module, epoch)
