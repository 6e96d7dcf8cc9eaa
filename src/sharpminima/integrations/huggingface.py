"""A Hugging Face ``transformers.TrainerCallback`` that measures the landscape during training.

Install with ``pip install 'sharpminima[hf]'``::

    from sharpminima.integrations.huggingface import SharpnessTrainerCallback

    callback = SharpnessTrainerCallback(held_batches, ["hessian_eigenvalues"], every_n_epochs=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
    callback.bind(trainer)  # optional: log through the trainer's reporters
    trainer.train()

The held data are batches of the model's keyword arguments with ``labels`` (tokenized
dicts), so the model's own ``.loss`` is the objective (a classifier's mean per sequence, a
causal language model's per predicted token; see :class:`~sharpminima.losses.ModelOutputLoss`).
After every N-th epoch and at the end of training the chosen measures are taken at the
model's current weights; results go to ``callback.history``, to ``state.log_history``
and, once :meth:`SharpnessTrainerCallback.bind` gave it the trainer, through
``trainer.log`` to every reporter (TensorBoard, W&B, MLflow). Training state is left as
it was (see :mod:`sharpminima.integrations.measuring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the extra is not installed
    from sharpminima.errors import ConfigError

    raise ConfigError("the Hugging Face callback needs the extra: pip install 'sharpminima[hf]'") from exc

from sharpminima.integrations.measuring import MeasureSchedule, MeasureSpec, metrics_of


class SharpnessTrainerCallback(MeasureSchedule, TrainerCallback):
    """Measure chosen quantities every N epochs and at the end of ``Trainer.train``.

    Args:
        data: Held batches (a DataLoader of fixed batches or a list of dicts with labels).
        measures: Measure names or ``(name, params)`` pairs.
        every_n_epochs: Measure after every N-th epoch (0: only at the end).
        at_end: Also measure at the end of training.
        loss: The loss (default: the model's own ``.loss``).
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
        self._schedule(data, measures, every_n_epochs, at_end, loss, bn_mode, prefix)
        self.trainer: Any = None

    def bind(self, trainer: Any) -> SharpnessTrainerCallback:
        """Log through ``trainer.log`` (every reporter the trainer has)."""
        self.trainer = trainer
        return self

    def _measure(self, state: Any, model: Any) -> None:
        if not state.is_world_process_zero or model is None:
            return
        epoch = float(state.epoch or 0.0)
        metrics = metrics_of(self._take(model, epoch), self.prefix)
        if self.trainer is not None:
            self.trainer.log(metrics)
        else:
            state.log_history.append({**metrics, "epoch": epoch, "step": state.global_step})

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Measure after every N-th epoch."""
        if self.due(round(state.epoch or 0)):
            self._measure(state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Measure at the end of training (unless that epoch was just measured)."""
        if self._end_due(float(state.epoch or 0.0)):
            self._measure(state, model)
