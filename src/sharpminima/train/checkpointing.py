"""How a training run meets the store: records, checkpoints, resume.

Files of a run, in ``store.run_dir(run_id)``:

* ``init.safetensors``: the initial weights (for distance-from-start measures);
* ``last_0.safetensors`` / ``last_1.safetensors``: model, optimizer and stopping-rule state
  after the last finished epochs, alternating, so one loadable checkpoint survives a kill
  while the other is being replaced (a killed run resumes from the newer loadable one);
* ``epoch_NNNN.safetensors``: each epoch's weights, when ``save_every_epoch`` is set;
* ``final.safetensors``: the final weights.

The epoch row is written to the store before the checkpoint; on resume, epoch rows newer
than the checkpoint are dropped and those epochs are trained again, so a run killed at any
moment ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError, StoreError

log = logging.getLogger(__name__)

FINISHED = ("done", "diverged")


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_into(target: Any, state: Any, where: str) -> None:
    """``target.load_state_dict(state)`` with one clear error when the state does not fit.

    Weights saved for another network (a factory changed since, a tampered file) give
    torch's multi-line ``size mismatch`` report; here they give one line.

    Raises:
        StoreError: If the stored state does not fit ``target`` (a model or optimizer).
    """
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise StoreError(
            f"{where} does not fit the network ({first}); the network's factory or the file "
            "changed since it was saved: train it again under another store or config"
        ) from None


@dataclass
class RunFiles:
    """A run's record and files in a store, or a no-op stand-in when there is no store."""

    store: Any
    config: TrainConfig
    run_id: str
    status: str = "pending"

    @classmethod
    def open(cls, store: Any, config: TrainConfig) -> RunFiles:
        """Find or create the run of ``config`` in ``store`` (None: train in memory)."""
        if store is None:
            return cls(None, config, config.hash()[:12])
        record, _ = store.get_or_create_run(config.to_dict(), config.hash())
        return cls(store, config, record.id, record.status)

    @property
    def root(self) -> Path | None:
        """The store's root directory, or None."""
        return Path(self.store.root) if self.store is not None else None

    def _path(self, name: str) -> Path:
        return Path(self.store.run_dir(self.run_id)) / f"{name}.safetensors"

    def _save(self, name: str, state: dict[str, Any]) -> None:
        from sharpminima.store import flatten_state, save_checkpoint

        tensors, meta = flatten_state(state)
        save_checkpoint(self._path(name), tensors, meta)

    def _load(self, name: str, device: torch.device | str = "cpu") -> dict[str, Any]:
        from sharpminima.store import load_checkpoint, unflatten_state

        tensors, meta = load_checkpoint(self._path(name), device=device)
        return unflatten_state(tensors, meta)

    def finished(self) -> bool:
        """Whether the store already holds this run as done or diverged."""
        return self.store is not None and self.status in FINISHED

    def load_run(self, make_model: Callable[[], nn.Module]) -> Any:
        """Return the stored :class:`~sharpminima.train.run.Run` of a finished run."""
        from sharpminima.train.run import Run

        model = make_model()
        device = next(model.parameters()).device
        load_into(model, self._load("final", device)["model"], f"run {self.run_id}'s final weights")
        init_state = self._load("init", device)["model"]
        record = self.store.get_run(self.run_id)
        history = self.store.epochs(self.run_id)
        return Run(
            self.run_id, self.config, record.status, record.message, history, model, init_state, self.root
        )

    def weights_of(self, spec: str) -> dict[str, Tensor]:
        """Return stored weights named ``RUN_ID`` (final) or ``RUN_ID@EPOCH``.

        Raises:
            ConfigError: If the epoch after ``@`` is not a number of at most 6 digits.
            StoreError: Without a store, or if the run or epoch has no saved weights.
        """
        if self.store is None:
            raise StoreError(f"init_from={spec!r} needs a run store; pass --store DIR")
        run_ref, _, epoch = spec.partition("@")
        if epoch and not (epoch.isascii() and epoch.isdigit() and len(epoch) <= 6):
            raise ConfigError(f"--init-from {spec!r}: write RUN_ID or RUN_ID@EPOCH with EPOCH a number")
        run = self.store.get_run(run_ref)
        name = f"epoch_{int(epoch):04d}" if epoch else "final"
        if epoch and int(epoch) == 0:
            name = "init"
        other = RunFiles(self.store, self.config, run.id)
        if not other._path(name).exists():
            raise StoreError(
                f"run {run.id} has no saved weights for {name}; train it with "
                "--save-every-epoch to warm-start from an epoch"
            )
        return other._load(name)["model"]

    def initial_weights(self, model: nn.Module) -> dict[str, Tensor]:
        """Save (or reload, when resuming) the initial weights and return a copy."""
        if self.store is not None:
            from sharpminima.store.checkpoints import is_committed

            path = self._path("init")
            if is_committed(path):
                state = self._load("init", next(model.parameters()).device)["model"]
                load_into(model, state, f"run {self.run_id}'s initial weights")
            else:  # none yet, or a save killed before its sidecar: the fresh model is the start
                if path.exists():
                    log.warning("run %s: its initial weights were never committed (killed while "
                                "saving them); saving them again", self.run_id)
                self._save("init", {"model": model.state_dict()})
        return _clone_state(model)

    def _latest(self) -> dict[str, Any] | None:
        """The newest loadable ``last_*`` checkpoint, or None."""
        states = []
        for name in ("last_0", "last_1"):
            if self._path(name).exists():
                try:
                    states.append(self._load(name))
                except StoreError:  # killed while this one was being replaced
                    continue
        return max(states, key=lambda s: int(s["epoch"]), default=None)

    def resume(self, model: nn.Module, opt: torch.optim.Optimizer, stop: Any, history: list[dict]) -> int:
        """Load the last checkpoint if there is one; return the last finished epoch."""
        if self.store is None:
            return 0
        for stale in Path(self.store.run_dir(self.run_id)).glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # left by a process killed mid-write
        state = self._latest()
        if state is None:
            self.store.truncate_epochs(self.run_id, 0)
            return 0
        load_into(model, state["model"], f"run {self.run_id}'s checkpoint")
        load_into(opt, state["optimizer"], f"run {self.run_id}'s optimizer checkpoint")
        stop.best = float(state["stop"]["best"])
        stop.bad_epochs = int(state["stop"]["bad_epochs"])
        epoch = int(state["epoch"])
        self.store.truncate_epochs(self.run_id, epoch)
        history[:] = self.store.epochs(self.run_id)
        return epoch

    def mark_running(self) -> None:
        """Record that training is under way, and by which process (``host:pid``)."""
        if self.store is not None:
            self.store.set_status(self.run_id, "running", worker=f"{platform.node()}:{os.getpid()}")

    def end_epoch(
        self,
        epoch: int,
        metrics: dict[str, Any],
        model: nn.Module,
        opt: torch.optim.Optimizer,
        stop: Any,
        *,
        save: bool,
    ) -> None:
        """Record an epoch's metrics, then checkpoint (in that order, see module doc)."""
        if self.store is None:
            return
        self.store.log_epoch(self.run_id, epoch, metrics)
        if not save:
            return
        if self.config.save_every_epoch:
            self._save(f"epoch_{epoch:04d}", {"model": model.state_dict()})
        self._save(
            f"last_{epoch % 2}",
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "stop": {"best": stop.best, "bad_epochs": stop.bad_epochs},
                "epoch": epoch,
            },
        )

    def finish(self, status: str, message: str | None, model: nn.Module, history: list[dict]) -> None:
        """Save the final weights and record the run's end."""
        if self.store is None:
            return
        if status in FINISHED:
            self._save("final", {"model": model.state_dict()})
        final = history[-1] if history else {}
        summary = {k: final.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
        summary["epochs"] = len(history)
        summary["seconds"] = sum(h.get("seconds", 0.0) for h in history)
        self.store.set_status(self.run_id, status, message, summary=summary)


def load_run(
    store: Any,
    run_ref: str,
    *,
    dataset: Any = None,
    device: str | torch.device | None = None,
    require_finite: bool = False,
) -> tuple[Any, Any]:
    """Load a finished run (final weights, history) and its dataset from a store.

    Args:
        store: The run store.
        run_ref: Run id or unique prefix.
        dataset: The run's dataset if already loaded (else loaded from its config).
        device: Where to put the model (default: CPU).
        require_finite: Refuse a run whose final weights hold NaN or infinities (a
            diverged run: measuring it would only report that the loss is NaN).

    Returns:
        ``(run, dataset)`` with the dataset limited as in the run's config.

    Raises:
        StoreError: If the run is not finished, its weights do not fit its network, or
            (with ``require_finite``) its weights are not finite.
    """
    from sharpminima.data import load
    from sharpminima.train.setup import build_model

    record = store.get_run(run_ref)
    if record.status not in FINISHED:
        raise StoreError(
            f"run {record.id} is {record.status}; finish it first by rerunning the same "
            "`sharpminima train` command"
        )
    config = TrainConfig.from_dict(record.config)
    if dataset is None:
        dataset = load(config.dataset, source=config.data_source)
    data = dataset.subset(config.train_limit, config.test_limit)
    dev = torch.device(device or "cpu")
    files = RunFiles(store, config, record.id, record.status)
    run = files.load_run(lambda: build_model(config, data).to(dev))
    if require_finite and not all(bool(torch.isfinite(p).all()) for p in run.model.state_dict().values()
                                  if p.is_floating_point()):
        raise StoreError(
            f"run {record.id} diverged (its weights are NaN or infinite: {record.message or 'no message'}); "
            "there is no landscape to measure, train it again with a lower --lr"
        )
    return run, data
