"""Hutchinson's stochastic trace estimator, with a standard error.

``tr(A) = E[z^T A z]`` for any random ``z`` with ``E[z z^T] = I`` (Hutchinson 1989). With
``m`` independent probes the estimate is the sample mean of ``z_j^T A z_j`` and its standard
error is the sample standard deviation over ``sqrt(m)``; for Rademacher probes the
variance of one sample is ``2 (||A||_F^2 - sum_i A_ii^2)``, the smallest of any i.i.d.
probe distribution, for Gaussian probes ``2 ||A||_F^2``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from sharpminima.deprecation import renamed
from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import LossFn, Objective
from sharpminima.landscape.operators import Operator, OperatorMeter, as_operator, resolve_operator
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, positive, register_measure
from sharpminima.landscape.results import Result

Distribution = Literal["rademacher", "gaussian"]
DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass(frozen=True)
class TraceResult(Result):
    """A Hutchinson estimate of ``tr(A)``.

    Attributes:
        value: Mean of the probe estimates ``z_j^T A z_j``.
        stderr: Sample standard error of ``value`` (sample std with ``ddof=1`` over
            ``sqrt(num_probes)``).
        num_probes: Number of probes used (fewer than asked if ``tol`` stopped early).
        estimates: The per-probe values ``z_j^T A z_j``.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        num_matvecs: Products with the operator (one per probe).

    """

    stderr: float = math.nan
    num_probes: int = 0
    estimates: tuple[float, ...] = ()
    distribution: str = "rademacher"
    num_matvecs: int = 0

    @property
    def num_samples(self) -> int:
        """Deprecated name of :attr:`num_probes`."""
        return self.num_probes


def probe(
    n: int, distribution: str, generator: torch.Generator, like: Operator
) -> Tensor:
    """Draw one probe ``z`` of length ``n`` with ``E[z z^T] = I`` (float64 on CPU, then moved).

    Args:
        n: Length.
        distribution: ``"rademacher"`` (entries +-1) or ``"gaussian"`` (standard normal).
        generator: CPU random generator.
        like: Operator whose dtype and device the probe takes.

    Raises:
        ConfigError: For an unknown distribution.

    """
    if distribution == "rademacher":
        z = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    elif distribution == "gaussian":
        z = torch.randn(n, generator=generator, dtype=torch.float64)
    else:
        raise ConfigError(
            f"unknown probe distribution {distribution!r}; choose one of {DISTRIBUTIONS}"
        )
    return z.to(dtype=like.dtype, device=like.device)


@renamed(samples="num_probes", min_samples="min_probes")
def hutchinson(
    A: Tensor | Operator,
    *,
    num_probes: int = 100,
    seed: int = 0,
    tol: float | None = None,
    distribution: Distribution = "rademacher",
    min_probes: int = 10,
) -> TraceResult:
    """Estimate ``tr(A)`` with Hutchinson's estimator and its standard error.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        num_probes: Most probes (one product each); at least 2, for a standard error.
        seed: Seed of the probes (drawn in float64 on CPU, so reproducible across devices).
        tol: Stop early once ``stderr <= tol * |value|`` (after ``min_probes`` probes);
            ``None`` always uses ``num_probes`` probes.
        distribution: ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
        min_probes: Fewest probes before the ``tol`` test (a standard error from very few
            probes is itself too noisy to stop on).

    Returns:
        :class:`TraceResult`; ``converged`` is True without ``tol``, else whether it was met.

    Raises:
        ConfigError: If ``num_probes < 2``, ``min_probes < 2``, ``tol <= 0`` or the
            distribution is unknown.

    """
    op = as_operator(A)
    if num_probes < 2 or min_probes < 2:
        raise ConfigError(
            f"need at least 2 probes for a standard error, got num_probes={num_probes}, "
            f"min_probes={min_probes}"
        )
    if tol is not None and not tol > 0:
        raise ConfigError(f"tol must be positive or None, got {tol!r}")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"unknown probe distribution {distribution!r}; choose one of {DISTRIBUTIONS}"
        )
    n = op.shape[0]
    generator = torch.Generator().manual_seed(seed)
    estimates: list[float] = []
    converged = tol is None
    with OperatorMeter(op) as meter:
        for _ in range(num_probes):
            z = probe(n, distribution, generator, op)
            estimates.append(float(torch.dot(z.double(), (op @ z).double())))
            m = len(estimates)
            if tol is not None and m >= min_probes:
                mean = statistics.fmean(estimates)
                if statistics.stdev(estimates) / math.sqrt(m) <= tol * abs(mean):
                    converged = True
                    break
    m = len(estimates)
    return TraceResult(
        value=statistics.fmean(estimates),
        stderr=statistics.stdev(estimates) / math.sqrt(m),
        num_probes=m,
        estimates=tuple(estimates),
        distribution=distribution,
        num_matvecs=meter.num_matvecs,
        settings={
            "method": "hutchinson",
            "num_probes": num_probes,
            "tol": tol,
            "min_probes": min_probes,
            "distribution": distribution,
            "seed": seed,
            **op.settings(),
        },
        cost=meter.cost,
        converged=converged,
        seed=seed,
    )


@renamed(samples="num_probes", min_samples="min_probes")
def hessian_trace(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    num_probes: int = 100,
    seed: int = 0,
    tol: float | None = None,
    distribution: Distribution = "rademacher",
    min_probes: int = 10,
    operator: Tensor | Operator | None = None,
) -> TraceResult:
    """Hutchinson estimate of the trace of the Hessian of ``loss`` at ``x``.

    For a network objective, the Hessian of the mean loss over its samples (batches
    weighted by their counts) in its BatchNorm mode; the trace is the sum of its
    eigenvalues.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point, shape ``(n,)``.
        num_probes: Most probes (one Hessian-vector product each).
        seed: Seed of the probes.
        tol: Early stop once ``stderr <= tol * |value|``; ``None`` uses every probe.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        min_probes: Fewest probes before the ``tol`` test.
        operator: Estimate the trace of this operator instead (e.g. a GGN operator).

    Returns:
        :class:`TraceResult` with ``value`` and ``stderr``.

    Raises:
        ConfigError: As :func:`hutchinson`, or if ``operator`` does not match ``x``.

    """
    op = resolve_operator(loss, x, operator)
    return hutchinson(
        op, num_probes=num_probes, seed=seed, tol=tol, distribution=distribution,
        min_probes=min_probes,
    )


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class TraceParams(MeasureParams):
    """Parameters of ``hessian_trace`` and ``ggn_trace``."""

    num_probes: int = 100
    seed: int = 0
    tol: float | None = None
    distribution: Literal["rademacher", "gaussian"] = "rademacher"
    min_probes: int = 10

    def validate(self) -> None:
        """Two or more probes; a positive tolerance."""
        if self.num_probes < 2 or self.min_probes < 2:
            raise ConfigError(f"num_probes and min_probes must be at least 2, got {self.num_probes}, "
                              f"{self.min_probes}")
        positive("tol", self.tol)


def _trace(curvature: str) -> Any:
    def compute(inputs: Inputs, p: TraceParams) -> TraceResult:
        from sharpminima.landscape.operators import GGNOperator

        op = GGNOperator(inputs.objective, inputs.x) if curvature == "ggn" else None
        return hessian_trace(inputs.objective, inputs.x, num_probes=p.num_probes, seed=p.seed, tol=p.tol,
                             distribution=p.distribution, min_probes=p.min_probes, operator=op)

    return compute


register_measure(Measure(
    "hessian_trace", TraceParams, _trace("hessian"),
    "Hutchinson estimate of tr(H) with its standard error (num_probes Hessian-vector products)",
    aliases=("trace",), passes=lambda p: 2 * p.num_probes,
))
register_measure(Measure(
    "ggn_trace", TraceParams, _trace("ggn"),
    "Hutchinson estimate of the Gauss-Newton matrix's trace (cross-entropy and MSE losses)",
    needs=Needs(network=True), passes=lambda p: 2 * p.num_probes,
))
