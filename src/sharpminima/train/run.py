"""The result of training: a :class:`Run`, and statistics over trials."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig

#: Per-epoch metrics every run records.
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass
class Run:
    """A finished (or diverged) training run.

    Attributes:
        id: Run id (the first 12 hex digits of the config hash).
        config: The configuration that produced it.
        status: ``done``, ``diverged`` or ``failed``.
        message: Why it diverged or failed, else None.
        history: One dict per epoch: ``epoch``, train/test loss and accuracy, ``seconds``
            (training time of that epoch) and ``epoch_loss`` (mean batch loss in train mode).
        model: The network holding the final weights.
        init_state: The initial weights (state dict), for distance-from-start measures.
        store_root: The store the run lives in, if any.
    """

    id: str
    config: TrainConfig
    status: str
    message: str | None
    history: list[dict[str, Any]]
    model: nn.Module
    init_state: dict[str, Tensor] = field(repr=False, default_factory=dict)
    store_root: Path | None = None

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics (empty if no epoch finished)."""
        return self.history[-1] if self.history else {}

    @property
    def epochs(self) -> int:
        """Number of epochs trained."""
        return len(self.history)

    @property
    def seconds(self) -> float:
        """Total training seconds over all epochs."""
        return float(sum(h.get("seconds", 0.0) for h in self.history))

    def initial_vector(self) -> Tensor:
        """The initial trainable parameters as one flat vector (same order as the model's)."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        device = next(self.model.parameters()).device
        return torch.cat([self.init_state[n].reshape(-1).to(device) for n in names])

    def summary(self) -> dict[str, Any]:
        """Return ``run_id``, ``status``, the final metrics, epochs and seconds."""
        out: dict[str, Any] = {"run_id": self.id, "status": self.status, "message": self.message}
        for key in METRICS:
            out[key] = self.final.get(key)
        out["epochs"] = self.epochs
        out["seconds"] = round(self.seconds, 3)
        out["batch_size"] = self.config.batch_size
        out["net"] = self.config.net
        out["seed"] = self.config.seed
        return out


def mean_std(runs: Sequence[Run], metric: str) -> tuple[float, float, int]:
    """Return mean, sample standard deviation and count of a final metric over runs.

    Runs that did not finish (``status != "done"``) are left out, never averaged in, and
    so are runs for which the metric is not defined (accuracy of a regression).
    The standard deviation is 0 for a single run and NaN for none.
    """
    # None: a metric the run's loss does not define (the accuracy of a regression)
    values = [float(r.final[metric]) for r in runs if r.status == "done" and r.final.get(metric) is not None]
    if not values:
        return math.nan, math.nan, 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)
