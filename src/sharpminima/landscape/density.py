"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

The spectral density of a symmetric ``n x n`` matrix ``A`` with eigenvalues ``lambda_i`` is
``phi(t) = (1/n) sum_i delta(t - lambda_i)``. For a probe ``v = z / sqrt(n)`` with
Rademacher ``z`` (so ``||v|| = 1`` and ``E[n v v^T] = I``), ``m`` Lanczos steps from ``v``
give a tridiagonal ``T`` with eigenpairs ``(theta_j, s_j)``, and
``v^T f(A) v ~= sum_j w_j f(theta_j)`` with ``w_j = s_{1j}^2`` (Gauss quadrature, exact for
polynomials of degree ``<= 2m - 1``). So each probe gives a discrete density with nodes
``theta_j`` and weights ``w_j`` summing to 1, and ``n sum_j w_j f(theta_j)`` is an unbiased
estimate of ``tr f(A)`` (for polynomial ``f`` of low degree) whose spread over probes gives
error bars (Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019; Yao et al. 2020,
PyHessian). Lanczos keeps its full basis and reorthogonalises against it, so no spurious
copies of converged eigenvalues ("ghosts") appear.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from sharpminima.errors import ConfigError
from sharpminima.landscape.eigen import LanczosProcess
from sharpminima.landscape.objective import LossFn, Objective
from sharpminima.landscape.operators import Operator, OperatorMeter, as_operator, resolve_operator
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, positive, register_measure
from sharpminima.landscape.results import Result
from sharpminima.landscape.trace import BLOCK, probe


@dataclass(frozen=True)
class DensityResult(Result):
    """Ritz nodes and quadrature weights of stochastic Lanczos quadrature, one set per probe.

    Attributes:
        value: Estimate of ``tr(A)`` (mean over probes of ``n sum_j w_j theta_j``).
        stderr: Standard error of ``value`` across probes (NaN with one probe).
        nodes: Per probe, the Ritz values ``theta_j`` (ascending); a probe whose Krylov space
            became invariant early has fewer.
        weights: Per probe, the quadrature weights ``w_j`` (non-negative, summing to 1).
        dim: ``n``, the operator's size.
        num_matvecs: Products with the operator (``num_probes * lanczos_steps`` at most).

    """

    stderr: float = math.nan
    nodes: tuple[tuple[float, ...], ...] = ()
    weights: tuple[tuple[float, ...], ...] = ()
    dim: int = 0
    num_matvecs: int = 0

    @property
    def num_probes(self) -> int:
        """Number of probes."""
        return len(self.nodes)

    def _per_probe(self, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``sum_j w_j fn(theta_j)`` for every probe, shape ``(num_probes, ...)``."""
        return np.stack(
            [
                np.tensordot(np.asarray(w), fn(np.asarray(t)), axes=(0, 0))
                for t, w in zip(self.nodes, self.weights, strict=True)
            ]
        )

    def expectation(self, fn: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
        """Estimate ``(1/n) tr fn(A)``, the spectral mean of ``fn``, and its standard error.

        Args:
            fn: Vectorised scalar function of the eigenvalue (numpy in, numpy out).

        Returns:
            ``(mean over probes, standard error across probes)``; the error is NaN with a
            single probe. It covers probe noise only, not the quadrature error for
            non-polynomial ``fn`` (small once ``lanczos_steps`` resolves the spectrum).

        """
        per_probe = self._per_probe(fn)
        return float(per_probe.mean()), _stderr(per_probe)

    def fraction_above(self, threshold: float) -> tuple[float, float]:
        """Estimate the fraction of eigenvalues above ``threshold``, with its standard error."""
        return self.expectation(lambda t: (t > threshold).astype(np.float64))

    def density(self, grid: ArrayLike, sigma: float) -> np.ndarray:
        """Gaussian-broadened density ``mean_p sum_j w_pj N(t; theta_pj, sigma^2)`` on ``grid``.

        It integrates to 1 over the real line (each probe's weights sum to 1).

        Args:
            grid: Points ``t`` (any shape; float64).
            sigma: Standard deviation of the Gaussian kernel, > 0.

        Raises:
            ConfigError: If ``sigma <= 0``.

        """
        return self._density_per_probe(grid, sigma).mean(axis=0)

    def density_stderr(self, grid: ArrayLike, sigma: float) -> np.ndarray:
        """Return the standard error across probes of :meth:`density` at each grid point.

        Raises:
            ConfigError: If ``sigma <= 0``.

        """
        per_probe = self._density_per_probe(grid, sigma)
        if per_probe.shape[0] < 2:
            return np.full(per_probe.shape[1:], math.nan)
        return per_probe.std(axis=0, ddof=1) / math.sqrt(per_probe.shape[0])

    def _density_per_probe(self, grid: ArrayLike, sigma: float) -> np.ndarray:
        if not sigma > 0:
            raise ConfigError(f"sigma must be positive, got {sigma!r}")
        t = np.asarray(grid, dtype=np.float64)

        def kernel(theta: np.ndarray) -> np.ndarray:
            z = (t[None, ...] - theta.reshape((-1,) + (1,) * t.ndim)) / sigma
            return np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))

        return self._per_probe(kernel)


def _stderr(per_probe: np.ndarray) -> float:
    if per_probe.shape[0] < 2:
        return math.nan
    return float(per_probe.std(ddof=1) / math.sqrt(per_probe.shape[0]))


def slq(
    A: Tensor | Operator,
    *,
    num_probes: int = 10,
    lanczos_steps: int = 50,
    seed: int = 0,
) -> DensityResult:
    """Stochastic Lanczos quadrature of the spectral density of a symmetric operator.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        num_probes: Independent Rademacher probes (at least 2 for error bars).
        lanczos_steps: Lanczos steps (products) per probe, at most ``n``; a probe stops early
            if its Krylov space becomes invariant (its quadrature is then exact).
        seed: Seed of the probes.

    Returns:
        :class:`DensityResult`; ``value`` is the SLQ estimate of ``tr(A)`` (for Rademacher
        probes equal to Hutchinson's with the same probes, since ``f(t) = t`` is integrated
        exactly).

    Raises:
        ConfigError: If ``num_probes < 1`` or ``lanczos_steps < 1``.

    """
    op = as_operator(A)
    if num_probes < 1 or lanczos_steps < 1:
        raise ConfigError(
            f"num_probes and lanczos_steps must be positive, got {num_probes} and {lanczos_steps}"
        )
    n = op.shape[0]
    steps = min(n, lanczos_steps)
    generator = torch.Generator().manual_seed(seed)
    nodes: list[tuple[float, ...]] = []
    weights: list[tuple[float, ...]] = []
    with OperatorMeter(op) as meter:
        for start in range(0, num_probes, BLOCK):
            # a block of probes runs Lanczos in lockstep: one block product per step
            procs = [LanczosProcess(op, probe(n, "rademacher", generator, op), steps)
                     for _ in range(min(BLOCK, num_probes - start))]
            active = list(procs)
            while active:
                products = op @ torch.stack([p.q.to(op.dtype) for p in active], dim=1)
                still = []
                for j, proc in enumerate(active):
                    beta = proc.step(products[:, j])
                    if proc.size == steps or proc.is_breakdown(beta):
                        continue
                    proc.advance(beta)
                    still.append(proc)
                active = still
            for proc in procs:
                theta, s = np.linalg.eigh(proc.tridiagonal())
                nodes.append(tuple(float(t) for t in theta))
                weights.append(tuple(float(w) for w in s[0, :] ** 2))
    traces = np.array([n * np.dot(w, t) for t, w in zip(nodes, weights, strict=True)])
    return DensityResult(
        value=float(traces.mean()),
        stderr=_stderr(traces),
        nodes=tuple(nodes),
        weights=tuple(weights),
        dim=n,
        num_matvecs=meter.num_matvecs,
        settings={
            "method": "slq",
            "num_probes": num_probes,
            "lanczos_steps": steps,
            "seed": seed,
            **op.settings(),
        },
        cost=meter.cost,
        converged=True,
        seed=seed,
    )


def spectral_density(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    num_probes: int = 10,
    lanczos_steps: int = 50,
    seed: int = 0,
    operator: Tensor | Operator | None = None,
) -> DensityResult:
    """Spectral density of the Hessian of ``loss`` at ``x`` by stochastic Lanczos quadrature.

    For a network objective, the Hessian of the mean loss over its ``N`` samples in its
    BatchNorm mode. Costs ``num_probes * lanczos_steps`` Hessian-vector products and
    ``lanczos_steps * n`` stored numbers.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point, shape ``(n,)``.
        num_probes: Independent Rademacher probes.
        lanczos_steps: Lanczos steps per probe.
        seed: Seed of the probes.
        operator: Use this operator instead of the Hessian (e.g. a GGN operator).

    Returns:
        :class:`DensityResult`; evaluate :meth:`DensityResult.density` on a grid.

    Raises:
        ConfigError: As :func:`slq`, or if ``operator`` does not match ``x``.

    """
    op = resolve_operator(loss, x, operator)
    return slq(op, num_probes=num_probes, lanczos_steps=lanczos_steps, seed=seed)


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class DensityParams(MeasureParams):
    """Parameters of ``spectral_density``: probes and Lanczos steps per probe."""

    num_probes: int = 10
    lanczos_steps: int = 50
    seed: int = 0

    def validate(self) -> None:
        """Positive counts."""
        positive("num_probes", self.num_probes, integer=True)
        positive("lanczos_steps", self.lanczos_steps, integer=True)


def _density(inputs: Inputs, p: DensityParams) -> DensityResult:
    return spectral_density(inputs.objective, inputs.x, num_probes=p.num_probes,
                            lanczos_steps=p.lanczos_steps, seed=p.seed)


register_measure(Measure(
    "spectral_density", DensityParams, _density,
    "Hessian spectral density by stochastic Lanczos quadrature (num_probes x lanczos_steps products)",
    aliases=("density",), passes=lambda p: 2 * p.num_probes * p.lanczos_steps,
))
