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
from typing import Literal

import torch
from torch import Tensor

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import LossFn, Objective
from sharpminima.landscape.operators import Operator, OperatorMeter, as_operator, resolve_operator
from sharpminima.landscape.results import Result

Distribution = Literal["rademacher", "gaussian"]
DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass(frozen=True)
class TraceResult(Result):
    """A Hutchinson estimate of ``tr(A)``.

    Attributes:
        value: Mean of the probe estimates ``z_j^T A z_j``.
        stderr: Sample standard error of ``value`` (sample std with ``ddof=1`` over
            ``sqrt(num_samples)``).
        num_samples: Number of probes used (fewer than asked if ``tol`` stopped early).
        estimates: The per-probe values ``z_j^T A z_j``.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        num_matvecs: Products with the operator (one per probe).

    """

    stderr: float = math.nan
    num_samples: int = 0
    estimates: tuple[float, ...] = ()
    distribution: str = "rademacher"
    num_matvecs: int = 0


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


def hutchinson(
    A: Tensor | Operator,
    *,
    samples: int = 100,
    seed: int = 0,
    tol: float | None = None,
    distribution: Distribution = "rademacher",
    min_samples: int = 10,
) -> TraceResult:
    """Estimate ``tr(A)`` with Hutchinson's estimator and its standard error.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        samples: Most probes (one product each); at least 2, for a standard error.
        seed: Seed of the probes (drawn in float64 on CPU, so reproducible across devices).
        tol: Stop early once ``stderr <= tol * |value|`` (after ``min_samples`` probes);
            ``None`` always uses ``samples`` probes.
        distribution: ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
        min_samples: Fewest probes before the ``tol`` test (a standard error from very few
            samples is itself too noisy to stop on).

    Returns:
        :class:`TraceResult`; ``converged`` is True without ``tol``, else whether it was met.

    Raises:
        ConfigError: If ``samples < 2``, ``min_samples < 2``, ``tol <= 0`` or the
            distribution is unknown.

    """
    op = as_operator(A)
    if samples < 2 or min_samples < 2:
        raise ConfigError(
            f"need at least 2 samples for a standard error, got samples={samples}, "
            f"min_samples={min_samples}"
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
        for _ in range(samples):
            z = probe(n, distribution, generator, op)
            estimates.append(float(torch.dot(z.double(), (op @ z).double())))
            m = len(estimates)
            if tol is not None and m >= min_samples:
                mean = statistics.fmean(estimates)
                if statistics.stdev(estimates) / math.sqrt(m) <= tol * abs(mean):
                    converged = True
                    break
    m = len(estimates)
    return TraceResult(
        value=statistics.fmean(estimates),
        stderr=statistics.stdev(estimates) / math.sqrt(m),
        num_samples=m,
        estimates=tuple(estimates),
        distribution=distribution,
        num_matvecs=meter.num_matvecs,
        settings={
            "method": "hutchinson",
            "samples": samples,
            "tol": tol,
            "min_samples": min_samples,
            "distribution": distribution,
            "seed": seed,
            **op.settings(),
        },
        cost=meter.cost,
        converged=converged,
        seed=seed,
    )


def hessian_trace(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    samples: int = 100,
    seed: int = 0,
    tol: float | None = None,
    distribution: Distribution = "rademacher",
    min_samples: int = 10,
    operator: Tensor | Operator | None = None,
) -> TraceResult:
    """Hutchinson estimate of the trace of the Hessian of ``loss`` at ``x``.

    For a ModelObjective, the Hessian of the mean loss over its ``N`` samples (chunks
    weighted by size) in its BatchNorm mode; the trace is the sum of its eigenvalues.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point, shape ``(n,)``.
        samples: Most probes (one Hessian-vector product each).
        seed: Seed of the probes.
        tol: Early stop once ``stderr <= tol * |value|``; ``None`` uses every sample.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        min_samples: Fewest probes before the ``tol`` test.
        operator: Estimate the trace of this operator instead (e.g. a GGN operator).

    Returns:
        :class:`TraceResult` with ``value`` and ``stderr``.

    Raises:
        ConfigError: As :func:`hutchinson`, or if ``operator`` does not match ``x``.

    """
    op = resolve_operator(loss, x, operator)
    return hutchinson(
        op, samples=samples, seed=seed, tol=tol, distribution=distribution,
        min_samples=min_samples,
    )
