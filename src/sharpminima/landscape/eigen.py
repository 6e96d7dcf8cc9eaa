"""The top of a Hessian's spectrum: Lanczos, ARPACK and power iteration.

Keskar et al. (2017, Sec. 2.2.2) note that for small ``eps`` and ``A = I`` their sharpness
metric tracks the largest eigenvalue of the Hessian of the training loss; this module
measures that eigenvalue (and the next ``k - 1``) directly, with matrix-free methods:

* :func:`lanczos`: Lanczos with full reorthogonalisation (Golub & Van Loan, Sec. 10.1),
  stopped as soon as the top ``k`` Ritz pairs have small residuals; usually the fewest
  products.
* :func:`arpack`: scipy's implicitly restarted Lanczos (``eigsh(which="LA")``) on the
  operator's float64 :class:`~scipy.sparse.linalg.LinearOperator` view; a reference path.
* :func:`power_iteration`: power iteration with deflation, as PyHessian does, for
  comparison.

All three stop on the same criterion, the residual of each Ritz pair
``||A y - theta y|| <= tol * |theta|`` (``y`` of unit norm). The residual bounds the
eigenvalue error: some eigenvalue lies within it of ``theta``, and within
``residual^2 / gap`` once ``theta`` is separated from the rest of the spectrum by ``gap``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from torch import Tensor

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import LossFn, Objective
from sharpminima.landscape.operators import (
    Operator,
    OperatorMeter,
    as_operator,
    resolve_operator,
)
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, positive, register_measure
from sharpminima.landscape.results import Result

EigenMethod = Literal["lanczos", "arpack", "power"]
METHODS = ("lanczos", "arpack", "power")


@dataclass(frozen=True)
class EigenResult(Result):
    """The largest (algebraic) eigenvalues of a symmetric operator.

    Attributes:
        value: The largest eigenvalue found (``values[0]``).
        values: The top ``k`` eigenvalues, largest first.
        residuals: ``||A y_i - values[i] y_i||`` for each unit Ritz vector ``y_i`` (empty for
            ARPACK, which checks them internally).
        vectors: The Ritz vectors ``(n, k)`` if requested, else ``None`` (not in ``to_dict``).
        num_matvecs: Products with the operator (Hessian-vector products for the Hessian).
        method: ``"lanczos"``, ``"arpack"`` or ``"power"``.
        history: The estimate of the top eigenvalue after each product: the largest Ritz
            value (Lanczos) or the Rayleigh quotient of the eigenpair being iterated (power
            iteration, all eigenpairs in turn); empty for ARPACK. Shows how fast a method
            converged, e.g. how many products it needed to reach a given accuracy.

    """

    values: tuple[float, ...] = ()
    residuals: tuple[float, ...] = ()
    vectors: Tensor | None = field(default=None, repr=False, compare=False)
    num_matvecs: int = 0
    method: str = ""
    history: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict without the eigenvectors."""
        if self.vectors is not None:
            return dataclasses.replace(self, vectors=None).to_dict()
        out = super().to_dict()
        out.pop("vectors", None)
        return out


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ConfigError(f"k must be an integer in [1, {n}] (the operator's size), got {k!r}")


def _check_tol(tol: float) -> None:
    if not tol > 0:
        raise ConfigError(f"tol must be positive, got {tol!r}")


def _random_vector(n: int, op: Operator, generator: torch.Generator) -> Tensor:
    # Drawn in float64 on the CPU so that a seed gives the same vector on every device.
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    return v.to(dtype=op.dtype, device=op.device)


def _floor(dtype: torch.dtype, scale: float) -> float:
    """Smallest |theta| a relative tolerance is measured against (for eigenvalues near 0)."""
    return math.sqrt(torch.finfo(dtype).eps) * scale


#: Precision of the Lanczos vectors and scalars (the products stay in the operator's dtype).
WORK_DTYPE = torch.float64


class LanczosProcess:
    """Lanczos with full reorthogonalisation; the basis is kept (``max_steps x n``).

    ``alphas`` and ``betas`` define the tridiagonal ``T``; ``betas[j]`` couples steps ``j``
    and ``j + 1`` (0 after a restart, which makes ``T`` block diagonal). The basis, the
    recurrence and the reorthogonalisation are kept in float64 whatever the operator's
    dtype: only the products ``A q`` are in the operator's precision (float32 for a
    network), so the tridiagonal's eigenvalues carry the products' relative error, about
    1e-7, instead of the accumulated round-off of float32 bookkeeping.
    """

    def __init__(self, op: Operator, start: Tensor, max_steps: int) -> None:
        self.op = op
        self.max_steps = max_steps
        # Grown by doubling, so a run that converges early never holds max_steps vectors.
        self.basis = torch.empty(
            min(max_steps, 16), op.shape[0], dtype=WORK_DTYPE, device=op.device
        )
        self.alphas: list[float] = []
        self.betas: list[float] = []
        start = start.to(WORK_DTYPE)
        self.q = start / start.norm()
        self.w = start
        self.scale = 0.0

    @property
    def size(self) -> int:
        """Number of basis vectors so far."""
        return len(self.alphas)

    def step(self, product: Tensor | None = None) -> float:
        """Extend the basis by one vector; return the new off-diagonal ``beta``.

        Args:
            product: ``A q`` for the current vector ``q``, when the caller computed it in a
                block with other processes' vectors; None: computed here.
        """
        j = self.size
        if j == self.basis.shape[0]:
            grown = torch.empty(
                min(self.max_steps, 2 * j), self.basis.shape[1], dtype=self.basis.dtype,
                device=self.basis.device,
            )
            grown[:j] = self.basis
            self.basis = grown
        self.basis[j] = self.q
        w = self.op @ self.q.to(self.op.dtype) if product is None else product
        w = w.to(WORK_DTYPE)
        alpha = float(torch.dot(self.q, w))
        w = w - alpha * self.q
        if j > 0:
            w = w - self.betas[-1] * self.basis[j - 1]
        basis = self.basis[: j + 1]  # (j+1, n)
        # Full reorthogonalisation, twice ("twice is enough", Parlett): no ghost eigenvalues.
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = float(w.norm())
        self.alphas.append(alpha)
        self.scale = max(self.scale, abs(alpha), beta)
        self.w = w
        return beta

    def is_breakdown(self, beta: float) -> bool:
        """Whether the Krylov space became invariant (to round-off)."""
        return beta <= 100 * torch.finfo(self.op.dtype).eps * self.scale

    def advance(self, beta: float) -> None:
        """Accept ``beta`` and normalise the next basis vector."""
        self.betas.append(beta)
        self.q = self.w / beta

    def restart(self, generator: torch.Generator) -> None:
        """Continue from a random vector orthogonal to the basis (after a breakdown)."""
        v = _random_vector(self.op.shape[0], self.op, generator).to(WORK_DTYPE)
        basis = self.basis[: self.size]
        for _ in range(2):
            v = v - basis.T @ (basis @ v)
        self.betas.append(0.0)
        self.q = v / v.norm()

    def tridiagonal(self, start: int = 0) -> np.ndarray:
        """The tridiagonal ``T`` of the steps from ``start`` on (float64)."""
        m = self.size
        t = np.diag(np.asarray(self.alphas[start:m], dtype=np.float64))
        off = np.asarray(self.betas[start : m - 1], dtype=np.float64)
        return t + np.diag(off, 1) + np.diag(off, -1)


def _result(
    values: np.ndarray,
    residuals: np.ndarray | None,
    vectors: Tensor | None,
    meter: OperatorMeter,
    op: Operator,
    settings: dict[str, Any],
    converged: bool,
    seed: int,
    history: list[float] | None = None,
) -> EigenResult:
    values = np.asarray(values, dtype=np.float64)
    return EigenResult(
        value=float(values[0]) if values.size else math.nan,
        values=tuple(float(v) for v in values),
        residuals=tuple(float(r) for r in residuals) if residuals is not None else (),
        vectors=vectors,
        num_matvecs=meter.num_matvecs,
        method=settings["method"],
        settings={**settings, **op.settings()},
        cost=meter.cost,
        converged=converged,
        seed=seed,
        history=tuple(history or ()),
    )


def lanczos(
    A: Tensor | Operator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_iters: int | None = None,
    seed: int = 0,
    return_vectors: bool = False,
) -> EigenResult:
    """Top ``k`` eigenvalues of a symmetric operator by Lanczos with full reorthogonalisation.

    Each step costs one product with ``A``; after step ``m`` the eigenvalues ``theta`` of
    the ``m x m`` tridiagonal ``T`` (Ritz values) are computed, and the run stops when the
    top ``k`` satisfy ``beta_m |s_{m,i}| <= tol * |theta_i|`` (the residual norm of Ritz pair
    ``i``; ``s`` are ``T``'s eigenvectors). The vectors and scalars are float64 (the
    products stay in the operator's dtype), so a tolerance down to about the products'
    relative precision (1e-7 for float32) is met by the returned values, not only by the
    residuals. If the Krylov space becomes invariant (a
    breakdown), Lanczos restarts from a random vector orthogonal to the basis, and stops
    only once the new block's top Ritz pair has converged too, so that eigenvalues missing
    from the first Krylov space (e.g. a repeated top eigenvalue) are found. The basis is
    stored: memory is up to ``2 * steps * n`` float64 numbers, for the ``steps`` actually
    taken (at most ``max_iters``).

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        k: How many of the largest (algebraic) eigenvalues to return.
        tol: Relative residual tolerance (``|theta_i|`` is floored at ``sqrt(eps)`` times
            the largest ``|theta|``, so eigenvalues near 0 are judged absolutely).
        max_iters: Most Lanczos steps (products); default ``min(n, max(100, 10 k))``.
        seed: Seed of the random start vector (standard normal, drawn in float64 on CPU).
        return_vectors: Whether to return the Ritz vectors ``(n, k)``.

    Returns:
        :class:`EigenResult` with ``method="lanczos"``; ``converged`` is False if
        ``max_iters`` steps did not meet ``tol``.

    Raises:
        ConfigError: If ``k`` is not in ``[1, n]``, ``max_iters < k`` or ``tol <= 0``.

    """
    op = as_operator(A)
    n = op.shape[0]
    _check_k(k, n)
    _check_tol(tol)
    if max_iters is not None and max_iters < k:
        raise ConfigError(f"max_iters ({max_iters}) must be at least k ({k})")
    steps = min(n, max_iters if max_iters is not None else max(100, 10 * k))
    settings = {"method": "lanczos", "k": k, "tol": tol, "max_iters": steps, "seed": seed}
    generator = torch.Generator().manual_seed(seed)
    converged = False
    history: list[float] = []
    with OperatorMeter(op) as meter:
        proc = LanczosProcess(op, _random_vector(n, op, generator), steps)
        block_start = 0
        while True:
            beta = proc.step()
            m = proc.size
            theta, s = np.linalg.eigh(proc.tridiagonal())
            history.append(float(theta[-1]))
            order = np.argsort(theta)[::-1][:k]
            floor = _floor(op.dtype, float(np.abs(theta).max()))
            bound = tol * np.maximum(np.abs(theta[order]), floor)
            top_ok = m >= k and bool(np.all(beta * np.abs(s[-1, order]) <= bound))
            breakdown = proc.is_breakdown(beta)
            if block_start > 0:
                # The block started after a breakdown must also have found its top pair.
                theta_b, s_b = np.linalg.eigh(proc.tridiagonal(block_start))
                top_b = tol * max(abs(theta_b[-1]), floor)
                top_ok = top_ok and beta * abs(s_b[-1, -1]) <= top_b
            elif breakdown:
                top_ok = False
            if top_ok or m == n:
                converged = True
                break
            if m == steps:
                break
            if breakdown:
                proc.restart(generator)
                block_start = m
            else:
                proc.advance(beta)
    residuals = beta * np.abs(s[-1, order])
    vectors = None
    if return_vectors:
        ritz = torch.as_tensor(s[:, order].copy(), dtype=WORK_DTYPE, device=op.device)  # (m, k)
        vectors = (proc.basis[:m].T @ ritz).to(op.dtype)  # (n, k)
    return _result(
        theta[order], residuals, vectors, meter, op, settings, converged, seed, history
    )


def arpack(
    A: Tensor | Operator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_iters: int | None = None,
    seed: int = 0,
    ncv: int | None = None,
    return_vectors: bool = False,
) -> EigenResult:
    """Top ``k`` eigenvalues by scipy's ARPACK (implicitly restarted Lanczos, ``which="LA"``).

    Runs on :meth:`Operator.to_scipy` in float64; ARPACK's ``tol`` is the same relative
    residual criterion as :func:`lanczos`'s. ARPACK first builds ``ncv`` Lanczos vectors
    (scipy's default ``min(n, max(2k + 1, 20))``), so it rarely needs fewer products than
    that; it is kept as an independent reference for :func:`lanczos`.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        k: How many of the largest (algebraic) eigenvalues; ARPACK needs ``k < n``.
        tol: Relative residual tolerance.
        max_iters: ARPACK's limit on restarts (``maxiter``); scipy's default if ``None``.
        seed: Seed of the start vector (numpy ``default_rng``, standard normal).
        ncv: Number of Lanczos vectors kept between restarts; scipy's default if ``None``.
        return_vectors: Whether to return the Ritz vectors ``(n, k)``.

    Returns:
        :class:`EigenResult` with ``method="arpack"``; on no convergence, ``converged`` is
        False and the values are those ARPACK had converged (possibly none: ``value`` NaN).

    Raises:
        ConfigError: If ``k`` is not in ``[1, n - 1]`` or ``tol <= 0``.

    """
    op = as_operator(A)
    n = op.shape[0]
    _check_k(k, n)
    _check_tol(tol)
    if k >= n:
        raise ConfigError(f"ARPACK needs k < n, got k={k} for n={n}; use lanczos instead")
    settings = {
        "method": "arpack", "k": k, "tol": tol, "max_iters": max_iters, "seed": seed, "ncv": ncv,
    }
    v0 = np.random.default_rng(seed).standard_normal(n)
    converged = True
    with OperatorMeter(op) as meter:
        try:
            values, vecs = eigsh(
                op.to_scipy(), k=k, which="LA", tol=tol, maxiter=max_iters, v0=v0, ncv=ncv
            )
        except ArpackNoConvergence as exc:
            values, vecs, converged = exc.eigenvalues, exc.eigenvectors, False
    order = np.argsort(values)[::-1]
    vectors = None
    if return_vectors:
        vectors = torch.as_tensor(vecs[:, order].copy(), dtype=op.dtype, device=op.device)
    return _result(values[order], None, vectors, meter, op, settings, converged, seed)


def power_iteration(
    A: Tensor | Operator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_iters: int = 1000,
    seed: int = 0,
    return_vectors: bool = False,
) -> EigenResult:
    """Top ``k`` eigenvalues by power iteration with deflation (PyHessian's method).

    Eigenpair ``i`` is found by iterating ``v <- P (A - sigma I) P v / ||.||``, where ``P``
    projects out the eigenvectors already found, until the Rayleigh quotient ``theta``
    has residual ``||P A v - theta v|| <= tol * |theta|``. Power iteration finds the
    eigenvalue of largest magnitude; to return the algebraic top, the shift ``sigma``
    starts at 0 and, if the eigenvalue found lies below ``sigma`` (a dominant negative
    eigenvalue), moves to it and the search restarts, which makes ``A - sigma I`` positive
    semidefinite on the remaining space (up to 3 such moves per eigenpair). Convergence
    is linear with rate ``|lambda_{i+1} - sigma| / |lambda_i - sigma|``.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        k: How many of the largest (algebraic) eigenvalues.
        tol: Relative residual tolerance (floored as in :func:`lanczos`).
        max_iters: Most iterations (products) per eigenpair and shift.
        seed: Seed of the random start vectors.
        return_vectors: Whether to return the eigenvectors ``(n, k)``.

    Returns:
        :class:`EigenResult` with ``method="power"``; ``converged`` is False if any
        eigenpair did not meet ``tol`` within ``max_iters``.

    Raises:
        ConfigError: If ``k`` is not in ``[1, n]``, ``max_iters < 1`` or ``tol <= 0``.

    """
    op = as_operator(A)
    n = op.shape[0]
    _check_k(k, n)
    _check_tol(tol)
    if max_iters < 1:
        raise ConfigError(f"max_iters must be at least 1, got {max_iters}")
    settings = {"method": "power", "k": k, "tol": tol, "max_iters": max_iters, "seed": seed}
    generator = torch.Generator().manual_seed(seed)
    found = torch.empty(n, 0, dtype=op.dtype, device=op.device)  # (n, i) eigenvectors
    values: list[float] = []
    residuals: list[float] = []
    converged = True
    shift, scale = 0.0, 0.0
    history: list[float] = []
    with OperatorMeter(op) as meter:
        while len(values) < k:
            for _ in range(4):  # the first try and up to 3 moves of the shift
                theta, res, ok, v = _power_one(
                    op, found, shift, scale, tol, max_iters, generator, history
                )
                if theta >= shift:
                    break
                shift = theta
            scale = max(scale, abs(theta))
            converged = converged and ok
            values.append(theta)
            residuals.append(res)
            found = torch.cat([found, v[:, None]], dim=1)
    order = np.argsort(values)[::-1]
    vectors = found[:, torch.as_tensor(order.copy())] if return_vectors else None
    return _result(
        np.asarray(values)[order], np.asarray(residuals)[order], vectors, meter, op,
        settings, converged, seed, history,
    )


def _power_one(
    op: Operator,
    found: Tensor,
    shift: float,
    scale: float,
    tol: float,
    max_iters: int,
    generator: torch.Generator,
    history: list[float],
) -> tuple[float, float, bool, Tensor]:
    """Power iteration for one eigenpair on the complement of ``found``'s columns."""

    def project(u: Tensor) -> Tensor:
        return u - found @ (found.T @ u) if found.shape[1] else u

    v = project(_random_vector(op.shape[0], op, generator))
    v = v / v.norm()
    theta, res = math.nan, math.inf
    for _ in range(max_iters):
        v = project(v)  # re-project every step: round-off brings found directions back
        v = v / v.norm()
        w = project(op @ v)  # P A v
        theta = float(torch.dot(v, w))
        history.append(theta)
        res = float((w - theta * v).norm())
        if res <= tol * max(abs(theta), _floor(op.dtype, max(scale, abs(theta)))):
            return theta, res, True, v
        u = w - shift * v
        norm = float(u.norm())
        if norm == 0.0:  # v is an exact eigenvector with eigenvalue sigma
            return theta, res, True, v
        v = u / norm
    return theta, res, False, v


def hessian_eigenvalues(
    loss: LossFn | Objective,
    x: Tensor,
    k: int = 1,
    *,
    method: EigenMethod = "lanczos",
    tol: float = 1e-3,
    max_iters: int | None = None,
    seed: int = 0,
    operator: Tensor | Operator | None = None,
    return_vectors: bool = False,
) -> EigenResult:
    """Top ``k`` eigenvalues of the Hessian of ``loss`` at ``x`` (or of another operator).

    For a :class:`~sharpminima.landscape.objective.ModelObjective` the Hessian is that of
    the mean loss over its ``N`` samples, ``(1/N) sum_i grad^2 loss_i`` (chunks weighted
    by size), in its BatchNorm mode; its settings are recorded in the result.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point, shape ``(n,)``.
        k: How many of the largest (algebraic) eigenvalues.
        method: ``"lanczos"`` (default, fewest products), ``"arpack"`` (scipy ``eigsh``) or
            ``"power"`` (power iteration with deflation).
        tol: Relative residual tolerance of each Ritz pair.
        max_iters: Lanczos steps / ARPACK restarts / power iterations per eigenpair;
            the method's default if ``None`` (1000 for power iteration).
        seed: Seed of the random start vector(s).
        operator: Work on this operator instead of the Hessian (e.g. a
            :class:`~sharpminima.landscape.operators.GGNOperator`).
        return_vectors: Whether to return the eigenvectors ``(n, k)``.

    Returns:
        :class:`EigenResult`, ``value`` = the largest eigenvalue.

    Raises:
        ConfigError: For an unknown method, or as the chosen method does.

    """
    if method not in METHODS:
        raise ConfigError(f"unknown eigenvalue method {method!r}; choose one of {METHODS}")
    op = resolve_operator(loss, x, operator)
    return top_eigenvalues(
        op, k, method=method, tol=tol, max_iters=max_iters, seed=seed,
        return_vectors=return_vectors,
    )


def top_eigenvalues(
    A: Tensor | Operator,
    k: int = 1,
    *,
    method: EigenMethod = "lanczos",
    tol: float = 1e-3,
    max_iters: int | None = None,
    seed: int = 0,
    return_vectors: bool = False,
) -> EigenResult:
    """Top ``k`` eigenvalues of any symmetric operator by the named method.

    Args:
        A: A symmetric ``n x n`` operator or dense tensor.
        k: How many of the largest (algebraic) eigenvalues.
        method: ``"lanczos"``, ``"arpack"`` or ``"power"``.
        tol: Relative residual tolerance of each Ritz pair.
        max_iters: The method's limit; its default if ``None`` (1000 for power iteration).
        seed: Seed of the random start vector(s).
        return_vectors: Whether to return the eigenvectors ``(n, k)``.

    Returns:
        :class:`EigenResult`.

    Raises:
        ConfigError: For an unknown method, or as the chosen method does.

    """
    if method == "lanczos":
        return lanczos(A, k, tol=tol, max_iters=max_iters, seed=seed, return_vectors=return_vectors)
    if method == "arpack":
        return arpack(A, k, tol=tol, max_iters=max_iters, seed=seed, return_vectors=return_vectors)
    if method == "power":
        return power_iteration(
            A, k, tol=tol, max_iters=max_iters if max_iters is not None else 1000, seed=seed,
            return_vectors=return_vectors,
        )
    raise ConfigError(f"unknown eigenvalue method {method!r}; choose one of {METHODS}")


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class EigenParams(MeasureParams):
    """Parameters of ``hessian_eigenvalues`` and ``ggn_eigenvalues``.

    Attributes:
        k: How many of the largest eigenvalues.
        method: ``"lanczos"``, ``"arpack"`` or ``"power"``.
        tol: Relative residual tolerance of each Ritz pair.
        max_iters: The method's step limit (None: its default).
        seed: Seed of the start vector(s).
    """

    k: int = 1
    method: Literal["lanczos", "arpack", "power"] = "lanczos"
    tol: float = 1e-3
    max_iters: int | None = None
    seed: int = 0

    def validate(self) -> None:
        """K >= 1, tol > 0, max_iters >= 1."""
        positive("k", self.k, integer=True)
        positive("tol", self.tol)
        positive("max_iters", self.max_iters, integer=True)


def _eigen(curvature: str) -> Any:
    def compute(inputs: Inputs, p: EigenParams) -> EigenResult:
        from sharpminima.landscape.operators import GGNOperator

        op = GGNOperator(inputs.objective, inputs.x) if curvature == "ggn" else None
        return hessian_eigenvalues(inputs.objective, inputs.x, p.k, method=p.method, tol=p.tol,
                                   max_iters=p.max_iters, seed=p.seed, operator=op)

    return compute


register_measure(Measure(
    "hessian_eigenvalues", EigenParams, _eigen("hessian"),
    "The top k eigenvalues of the Hessian (Lanczos on Hessian-vector products)",
    aliases=("hessian", "hessian_top_eigenvalue"), passes=lambda p: 2 * (20 + 10 * p.k),
))
register_measure(Measure(
    "ggn_eigenvalues", EigenParams, _eigen("ggn"),
    "The top k eigenvalues of the generalised Gauss-Newton matrix (cross-entropy and MSE losses)",
    aliases=("ggn",), needs=Needs(network=True), passes=lambda p: 2 * (20 + 10 * p.k),
))
