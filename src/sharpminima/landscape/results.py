"""Frozen result types shared by every landscape measure."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sharpminima.landscape.objective import Counters, Objective


@dataclass(frozen=True)
class Cost:
    """What a measurement cost.

    Attributes:
        num_loss: Full loss evaluations.
        num_grad: Full loss-and-gradient evaluations.
        num_hvp: Hessian-vector products.
        seconds: Wall-clock seconds.
    """

    num_loss: int = 0
    num_grad: int = 0
    num_hvp: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return asdict(self)


class CostMeter:
    """Measure the evaluations and seconds spent on an objective inside a ``with`` block.

    Example:
        >>> with CostMeter(obj) as meter:
        ...     ...
        >>> meter.cost  # Cost(num_loss=..., seconds=...)
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.cost = Cost()

    def __enter__(self) -> CostMeter:
        self._start: Counters = self.objective.counters.snapshot()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cost = self.current()

    def current(self) -> Cost:
        """Return the cost accumulated so far."""
        d = self.objective.counters.since(self._start)
        return Cost(d.num_loss, d.num_grad, d.num_hvp, time.perf_counter() - self._t0)


@dataclass(frozen=True)
class Result:
    """Base of every measurement result.

    Attributes:
        value: The headline number of the measure.
        settings: Every setting that determines the value (eps, BN mode, seed, ...).
        cost: Evaluations and seconds spent.
        converged: Whether an iterative method met its tolerance (True if not iterative).
        seed: Random seed used, or None for deterministic measures.
    """

    value: float
    settings: dict[str, Any] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)
    converged: bool = True
    seed: int | None = None

    @property
    def kind(self) -> str:
        """Short name of the measure (the class name in snake case by default)."""
        name = type(self).__name__.removesuffix("Result")
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict with ``kind``, ``value``, ``settings`` and ``cost``."""
        out: dict[str, Any] = {"kind": self.kind}
        for k, v in self.__dict__.items():
            out[k] = v.to_dict() if isinstance(v, Cost) else _jsonable(v)
        return out


    def to_record(self, max_elements: int = 4096) -> dict[str, Any]:
        """Return :meth:`to_dict` with large arrays replaced by a note of their shape.

        Arrays with more than ``max_elements`` entries (e.g. a perturbation the size of the
        network) would not fit in a database row.
        """
        out: dict[str, Any] = {"kind": self.kind}
        for k, v in self.__dict__.items():
            if hasattr(v, "shape") and hasattr(v, "size") and _numel(v) > max_elements:
                out[k] = {"omitted": f"array of shape {tuple(v.shape)}"}
            else:
                out[k] = v.to_dict() if isinstance(v, Cost) else _jsonable(v)
        return out


def _numel(v: Any) -> int:
    n = v.numel() if callable(getattr(v, "numel", None)) else v.size
    return int(n)


def _jsonable(v: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Result):
        return v.to_record()
    if isinstance(v, Cost):
        return v.to_dict()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v
