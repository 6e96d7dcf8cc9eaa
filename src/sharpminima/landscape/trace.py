"""Stochastic trace estimators with honest standard errors: Hutchinson, Hutch++ and XTrace.

``tr(A) = E[z^T A z]`` for any random ``z`` with ``E[z z^T] = I`` (Hutchinson 1989). With
``m`` independent probes the estimate is the sample mean of ``z_j^T A z_j`` and its standard
error is the sample standard deviation over ``sqrt(m)``; for Rademacher probes the
variance of one sample is ``2 (||A||_F^2 - sum_i A_ii^2)``, the smallest of any i.i.d.
probe distribution, for Gaussian probes ``2 ||A||_F^2``. Its error falls as ``1/sqrt(m)``
whatever the spectrum.

Two estimators spend part of the products on the top of the spectrum, where a Hessian's
trace concentrates when its eigenvalues decay:

* **Hutch++** (Meyer, Musco, Musco, Woodruff 2021): a third of the products sketch the
  range ``Q = orth(A S)``, a third give ``tr(Q^T A Q)`` exactly, the last third run
  Hutchinson on the deflated ``(I - QQ^T) A (I - QQ^T)``. Its standard error is that of the
  deflated part (the rest is exact).
* **XTrace** (Epperly, Tropp, Webber 2024): half the products sketch ``Y = A Omega``, half
  give ``A Q``; each of the ``m/2`` test vectors yields a leave-one-out estimate
  (deflation by the sketch of the others, Hutchinson on its own vector); their mean is
  the estimate and their standard deviation over ``sqrt(m/2)`` the standard error.
  Test vectors are uniform on the sphere of radius ``sqrt(n)`` with the authors'
  "improved" rescaling. Its standard error is the authors' estimate and is optimistic:
  the leave-one-out estimates are correlated, and over repeated seeds we measured the
  actual error 1.2 to 1.6 times the reported one (a jackknife overstates it 2 to 3 times).

Which to use. On a flat spectrum deflation buys nothing and Hutchinson, which spends every
product on the sample, has the smallest error; when a few eigenvalues carry the trace,
XTrace's error is the smallest, then Hutch++. At trained F1 minima (the top 10 of about
1.5 million eigenvalues carry about half the trace; ``benchmarks/bench_trace.py``) XTrace
had the smallest error at 96 products, 1.3 to 1.6 times below Hutchinson's; at 24 it won
at the SB minimum and lost at the LB one. Hutch++ beat Hutchinson only at the SB minimum
with 96 products (2.0% against 2.3%, less than the spread's own uncertainty) and had 2.4 to
3 times its error at the LB one.
So ``method="auto"``, the default, is XTrace, and Hutchinson where a tolerance ``tol`` asks
for probes to be added until it is met (only Hutchinson can) or fewer than 4 products are
allowed.

Products go through the operator in blocks (``A @ V``): a Hessian with a kept gradient graph
pushes a block through one batched reverse pass. The sketches and their QR factorisations
are kept in float64 (``n x m/2`` numbers each), the products in the operator's dtype.
"""

from __future__ import annotations

import dataclasses
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
TraceMethod = Literal["auto", "hutchinson", "hutch++", "xtrace"]
#: The estimators (``"auto"`` picks one of them: :func:`resolve_method`).
TRACE_METHODS = ("hutchinson", "hutch++", "xtrace")
#: Probes pushed through the operator per block product.
BLOCK = 8


@dataclass(frozen=True)
class TraceResult(Result):
    """A stochastic estimate of ``tr(A)`` with its standard error.

    Attributes:
        value: The estimate.
        stderr: Its standard error: sample std (``ddof=1``) of ``estimates`` over the square
            root of their number (for Hutch++ the deflated part's; its exact part adds none).
        num_probes: Products with the operator spent (Hutchinson: probes; fewer than asked
            if ``tol`` stopped early).
        estimates: The independent samples behind ``stderr``: ``z_j^T A z_j`` (Hutchinson),
            the deflated ``g_j^T A g_j`` (Hutch++), the leave-one-out estimates (XTrace).
        distribution: Probe distribution (``"sphere"`` for XTrace).
        num_matvecs: Products with the operator.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        exact_part: Hutch++'s ``tr(Q^T A Q)`` (0 for the others).
    """

    stderr: float = math.nan
    num_probes: int = 0
    estimates: tuple[float, ...] = ()
    distribution: str = "rademacher"
    num_matvecs: int = 0
    method: str = "hutchinson"
    exact_part: float = 0.0

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
        if tol is None:  # every probe is spent: push them through in blocks
            for start in range(0, num_probes, BLOCK):
                Z = torch.stack([probe(n, distribution, generator, op)
                                 for _ in range(min(BLOCK, num_probes - start))], dim=1)
                estimates += (Z.double() * (op @ Z).double()).sum(0).tolist()
        for _ in range(num_probes if tol is not None else 0):
            z = probe(n, distribution, generator, op)
            estimates.append(float(torch.dot(z.double(), (op @ z).double())))
            m = len(estimates)
            if m >= min_probes:
                mean = statistics.fmean(estimates)
                if statistics.stdev(estimates) / math.sqrt(m) <= tol * abs(mean):  # type: ignore[operator]
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
        method="hutchinson",
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


def _products(op: Operator, V: Tensor) -> Tensor:
    """``A @ V`` in blocks of :data:`BLOCK` columns, returned in float64."""
    cols = [(op @ V[:, j : j + BLOCK]).double() for j in range(0, V.shape[1], BLOCK)]
    return torch.cat(cols, dim=1)


def _sample_error(values: Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(values.numel())) if values.numel() > 1 else math.nan


def _check_budget(method: str, num_probes: int, least: int) -> None:
    if not (isinstance(num_probes, int) and num_probes >= least):
        raise ConfigError(f"{method} needs at least {least} products (num_probes), got {num_probes!r}")


def hutch_plus_plus(
    A: Tensor | Operator,
    *,
    num_probes: int = 99,
    seed: int = 0,
    distribution: Distribution = "rademacher",
) -> TraceResult:
    """Estimate ``tr(A)`` with Hutch++ (Meyer et al. 2021) from ``num_probes`` products.

    ``s = num_probes // 3`` products sketch ``Q = orth(A S)``, ``s`` more give the exact
    ``tr(Q^T A Q)``, the remaining ``num_probes - 2 s`` run Hutchinson on the deflated
    matrix ``(I - QQ^T) A (I - QQ^T)`` with probes ``g = (I - QQ^T) z``.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        num_probes: Products to spend (at least 6: two for the sketch, two for its trace,
            two for a standard error).
        seed: Seed of the sketch and probe matrices (drawn in float64 on CPU).
        distribution: ``"rademacher"`` or ``"gaussian"`` entries.

    Returns:
        :class:`TraceResult` with ``method="hutch++"`` and ``exact_part = tr(Q^T A Q)``.

    Raises:
        ConfigError: For fewer than 6 products or an unknown distribution.
    """
    op = as_operator(A)
    _check_budget("hutch++", num_probes, 6)
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"unknown probe distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
    n = op.shape[0]
    s = min(num_probes // 3, n)
    g = num_probes - 2 * s
    generator = torch.Generator().manual_seed(seed)

    def draw(k: int) -> Tensor:
        if distribution == "rademacher":
            return torch.randint(0, 2, (n, k), generator=generator, dtype=torch.float64) * 2 - 1
        return torch.randn(n, k, generator=generator, dtype=torch.float64)

    with OperatorMeter(op) as meter:
        S, G = draw(s), draw(g)
        Q, _ = torch.linalg.qr(_products(op, S.to(op.device)).cpu())  # (n, s), float64
        exact = float(torch.trace(Q.T @ _products(op, Q.to(op.device)).cpu()))
        G = G - Q @ (Q.T @ G)
        ests = (G * _products(op, G.to(op.device)).cpu()).sum(0)
    return TraceResult(
        value=exact + float(ests.mean()),
        stderr=_sample_error(ests),
        num_probes=meter.num_matvecs,
        estimates=tuple(ests.tolist()),
        distribution=distribution,
        num_matvecs=meter.num_matvecs,
        method="hutch++",
        exact_part=exact,
        settings={"method": "hutch++", "num_probes": num_probes, "sketch": s, "deflated_probes": g,
                  "distribution": distribution, "seed": seed, **op.settings()},
        cost=meter.cost,
        converged=True,
        seed=seed,
    )


def _diag_prod(A: Tensor, B: Tensor) -> Tensor:
    """``diag(A^T B)``: the dot products of matching columns."""
    return (A * B).sum(0)


def xtrace(A: Tensor | Operator, *, num_probes: int = 100, seed: int = 0) -> TraceResult:
    """Estimate ``tr(A)`` with XTrace (Epperly, Tropp, Webber 2024) from ``num_probes`` products.

    ``m = num_probes // 2`` test vectors ``omega_i`` (uniform on the sphere of radius
    ``sqrt(n)``) are sketched, ``Y = A Omega = QR``, and ``A Q`` is formed (``m`` more
    products). Each ``i`` gives an estimate that deflates by the sketch of the other
    ``m - 1`` vectors and runs Hutchinson on ``omega_i`` (exchangeable: every vector is used
    both ways); the estimate is their mean and its standard error their sample std over
    ``sqrt(m)``. The leave-one-out bases come from ``R^{-1}`` without refactoring.

    The standard error understates the error (the leave-one-out estimates share the
    sketch): over repeated seeds the actual error was 1.2 to 1.6 times the reported one.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        num_probes: Products to spend (at least 4; an odd one is left unused).
        seed: Seed of the test vectors (drawn in float64 on CPU).

    Returns:
        :class:`TraceResult` with ``method="xtrace"`` and ``distribution="sphere"``.

    Raises:
        ConfigError: For fewer than 4 products, or more test vectors than ``n``.
    """
    op = as_operator(A)
    _check_budget("xtrace", num_probes, 4)
    n = op.shape[0]
    m = num_probes // 2
    if m >= n:
        raise ConfigError(f"xtrace needs fewer test vectors ({m}) than the dimension ({n}); "
                          "use fewer products or compute the trace exactly")
    generator = torch.Generator().manual_seed(seed)
    with OperatorMeter(op) as meter:
        Om = torch.randn(n, m, generator=generator, dtype=torch.float64)
        Om = math.sqrt(n) * Om / Om.norm(dim=0)
        Y = _products(op, Om.to(op.device)).cpu()
        Q, R = torch.linalg.qr(Y)
        W = Q.T @ Om
        S = torch.linalg.inv(R).T
        S = S / S.norm(dim=0)
        # the authors' "improved" normalisation of each leave-one-out estimate
        scale = math.sqrt(n - m + 1) / torch.sqrt(n - W.norm(dim=0) ** 2 + _diag_prod(S, W) ** 2)
        Om, R, Y, W = Om * scale, R * scale, Y * scale, W * scale
        Z = _products(op, Q.to(op.device)).cpu()
    H = Q.T @ Z
    HW = H @ W
    T = Z.T @ Om
    dSW = _diag_prod(S, W)
    dSHS = _diag_prod(S, H @ S)
    ests = (
        torch.trace(H) - dSHS + _diag_prod(Om, Y) - _diag_prod(W, R) - _diag_prod(T, W)
        + _diag_prod(W, HW) + dSW * _diag_prod(S, R - HW) + dSW**2 * dSHS
        + _diag_prod(T - H.T @ W, S) * dSW
    )
    return TraceResult(
        value=float(ests.mean()),
        stderr=_sample_error(ests),
        num_probes=meter.num_matvecs,
        estimates=tuple(ests.tolist()),
        distribution="sphere",
        num_matvecs=meter.num_matvecs,
        method="xtrace",
        settings={"method": "xtrace", "num_probes": num_probes, "test_vectors": m, "seed": seed,
                  **op.settings()},
        cost=meter.cost,
        converged=True,
        seed=seed,
    )


def resolve_method(
    method: str, *, tol: float | None = None, num_probes: int = 100, dim: int | None = None
) -> str:
    """The estimator ``method`` names.

    ``"auto"`` is XTrace, or Hutchinson when ``tol`` is given, fewer than 4 products are
    allowed, or the operator's dimension ``dim`` is at most ``num_probes // 2`` (XTrace's
    sketch would span the whole space).

    Raises:
        ConfigError: For an unknown method.
    """
    if method == "auto":
        small = dim is not None and num_probes // 2 >= dim
        return "hutchinson" if tol is not None or num_probes < 4 or small else "xtrace"
    if method not in TRACE_METHODS:
        raise ConfigError(f"unknown trace method {method!r}; choose auto or one of "
                          f"{', '.join(TRACE_METHODS)}")
    return method


def estimate_trace(
    A: Tensor | Operator,
    *,
    method: TraceMethod = "auto",
    num_probes: int = 100,
    seed: int = 0,
    tol: float | None = None,
    distribution: Distribution = "rademacher",
    min_probes: int = 10,
) -> TraceResult:
    """``tr(A)`` by ``method``: :func:`hutchinson`, :func:`hutch_plus_plus` or :func:`xtrace`.

    ``"auto"`` picks one of them (:func:`resolve_method`).

    Raises:
        ConfigError: For an unknown method, or ``tol`` with a method other than Hutchinson
            (only Hutchinson adds probes one at a time until a tolerance is met).
    """
    dim = as_operator(A).shape[0]
    method = resolve_method(method, tol=tol, num_probes=num_probes, dim=dim)  # type: ignore[assignment]
    if method == "hutchinson":
        return hutchinson(A, num_probes=num_probes, seed=seed, tol=tol, distribution=distribution,
                          min_probes=min_probes)
    if tol is not None:
        raise ConfigError(f"tol stops Hutchinson early; {method} spends its num_probes products in "
                          "blocks (set num_probes instead)")
    if method == "hutch++":
        return hutch_plus_plus(A, num_probes=num_probes, seed=seed, distribution=distribution)
    return xtrace(A, num_probes=num_probes, seed=seed)


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
    method: TraceMethod = "auto",
) -> TraceResult:
    """Estimate of the trace of the Hessian of ``loss`` at ``x``, with its standard error.

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
        method: ``"auto"`` (XTrace; Hutchinson with ``tol``), ``"hutchinson"``, ``"hutch++"``
            or ``"xtrace"`` (see the module).

    Returns:
        :class:`TraceResult` with ``value`` and ``stderr``.

    Raises:
        ConfigError: As :func:`estimate_trace`, or if ``operator`` does not match ``x``.

    """
    op = resolve_operator(loss, x, operator)
    return estimate_trace(op, method=method, num_probes=num_probes, seed=seed, tol=tol,
                          distribution=distribution, min_probes=min_probes)


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class TraceParams(MeasureParams):
    """Parameters of ``hessian_trace`` and ``ggn_trace`` (see :func:`estimate_trace`).

    Attributes:
        num_probes: Products to spend (Hutchinson: probes).
        seed: Seed of the probes.
        tol: Hutchinson only: stop once the relative standard error is below it.
        distribution: Probe entries (Hutchinson and Hutch++).
        min_probes: Hutchinson only: fewest probes before the ``tol`` test.
        method: ``"auto"`` (XTrace; Hutchinson with ``tol``), ``"hutchinson"``, ``"hutch++"``
            or ``"xtrace"``.
    """

    num_probes: int = 100
    seed: int = 0
    tol: float | None = None
    distribution: Literal["rademacher", "gaussian"] = "rademacher"
    min_probes: int = 10
    method: Literal["auto", "hutchinson", "hutch++", "xtrace"] = "auto"

    @property
    def estimator(self) -> str:
        """The estimator that runs (``"auto"`` resolved, except for tiny operators)."""
        return resolve_method(self.method, tol=self.tol, num_probes=self.num_probes)

    def validate(self) -> None:
        """A known method with enough products; a positive tolerance, for Hutchinson only."""
        method = self.estimator
        least = {"hutchinson": 2, "hutch++": 6, "xtrace": 4}[method]
        if self.num_probes < least or self.min_probes < 2:
            raise ConfigError(f"{method} needs num_probes >= {least} (and min_probes >= 2), got "
                              f"{self.num_probes}, {self.min_probes}")
        positive("tol", self.tol)
        if self.tol is not None and method != "hutchinson":
            raise ConfigError(f"tol stops Hutchinson early; {method} spends num_probes products")

    def canonical(self) -> dict[str, Any]:
        """Only the settings the estimator uses identify the measurement."""
        out = dataclasses.asdict(self)
        if self.estimator != "hutchinson":
            out.update(tol=None, min_probes=None)
        if self.method == "xtrace":
            out.update(distribution=None)
        return out


def _trace(curvature: str) -> Any:
    def compute(inputs: Inputs, p: TraceParams) -> TraceResult:
        from sharpminima.landscape.operators import GGNOperator

        op = GGNOperator(inputs.objective, inputs.x) if curvature == "ggn" else None
        return hessian_trace(inputs.objective, inputs.x, num_probes=p.num_probes, seed=p.seed, tol=p.tol,
                             distribution=p.distribution, min_probes=p.min_probes, operator=op,
                             method=p.method)

    return compute


register_measure(Measure(
    "hessian_trace", TraceParams, _trace("hessian"),
    "Trace of the Hessian with its standard error: Hutchinson, Hutch++ or XTrace (num_probes products)",
    aliases=("trace",), passes=lambda p: 2 * p.num_probes,
))
register_measure(Measure(
    "ggn_trace", TraceParams, _trace("ggn"),
    "Trace of the Gauss-Newton matrix (cross-entropy and MSE losses), with its standard error",
    needs=Needs(network=True), passes=lambda p: 2 * p.num_probes,
))
