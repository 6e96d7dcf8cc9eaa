"""Keskar et al.'s sharpness (Metric 2.1), full space and random subspace.

Keskar, Mudigere, Nocedal, Smelyanskiy, Tang, "On Large-Batch Training for Deep Learning:
Generalization Gap and Sharp Minima", ICLR 2017, Sec. 2.2.2. For parameters ``x`` in
``R^n``, a matrix ``A`` in ``R^{n x p}`` and ``eps > 0``::

    C_eps = { y in R^p : |y_i| <= eps * (|(A^+ x)_i| + 1) }
    phi(x, f; eps, A) = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x))

``A = None`` means ``A = I_n`` (the box ``x_i +- eps (|x_i| + 1)``). The maximisation is
done, as in the paper, inexactly with ``max_iters`` (10) iterations of L-BFGS-B started at
``y = 0``, on ``-f`` with gradient ``-A^T grad f`` (smoothout's public code hands L-BFGS-B
``-f`` with ``+grad f``, a sign error that makes its "maximiser" a minimiser).

How it is computed, and why:

* The reported maximum is the largest ``f`` among *all* points evaluated (the start
  ``y = 0`` included), not the optimiser's last iterate: L-BFGS-B's final iterate need not
  be its best, the value is never negative, and every evaluated point lies in the box
  (L-BFGS-B keeps its iterates feasible; each ``y`` is clipped to the box before use as a
  guard against rounding).
* Each point is set absolutely, ``x + A y``, in the objective's dtype (float32 for a
  network; in the full space ``x + y`` is formed in float64 and rounded once); the
  gradient in box coordinates is ``A^T grad f``. The last ``(y, point, f, grad)`` is
  cached, so a repeated request for the same ``y``, or for a ``y`` whose point rounds to
  the same float32 vector, costs nothing.
* ``A^+ x`` is computed without a pseudo-inverse: ``A^T A`` is accumulated in float64
  over row blocks, factored by Cholesky (a ``p x p`` problem) and the solution refined once
  with the residual (corrected semi-normal equations, Bjorck 1987), accurate to
  ``O(cond(A) u)`` like a QR solve. A dense ``n x p`` pseudo-inverse of F1's
  1.46M x 100 matrix alone takes ~37 s on two CPU cores; this takes about one second.
* The box search itself (evaluations, caching, L-BFGS-B drivers, sign-gradient ascent)
  is :mod:`sharpminima.landscape.box_search`, shared with adaptive sharpness.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sharpminima.deprecation import renamed
from sharpminima.errors import ConfigError
from sharpminima.landscape.box_search import (
    BoxSearch,
    Driver,
    check_box_args,
    resolve_driver,
    run_lbfgsb,
    run_pga,
)
from sharpminima.landscape.objective import LossFn, Objective, as_objective, objective_settings
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, register_measure
from sharpminima.landscape.results import CostMeter, Result

SubspaceDistribution = Literal["uniform", "gaussian", "uniform-raw"]
MultistartMethod = Literal["lbfgsb", "pga"]

DISTRIBUTIONS = ("uniform", "gaussian", "uniform-raw")
MULTISTART_METHODS = ("lbfgsb", "pga")


@dataclass(frozen=True)
class SharpnessResult(Result):
    """A box-constrained maximum of the loss around a point.

    For Keskar sharpness ``value = 100 * (fmax - f0) / (1 + f0)``; for adaptive sharpness
    (:func:`sharpminima.landscape.flatness.adaptive_sharpness`) ``value = fmax - f0``;
    ``settings["metric"]`` says which.

    Attributes:
        value: The metric.
        f0: ``f(x)``.
        fmax: The largest ``f(x + A y)`` evaluated, ``y`` in the box (``>= f0``).
        y: The box coordinates ``(p,)`` (float64) where ``fmax`` was found; the perturbed
            point is ``x + A @ y`` (``x + y`` in the full space). Not in ``to_dict``.
        halfwidth: The box half-widths ``(p,)`` (float64): ``|y_i| <= halfwidth[i]``.
            Not in ``to_dict``.
        final_f: ``f`` at the optimiser's final iterate (may be below ``fmax``).
        num_iters: Optimiser iterations.
        num_evals: Points the optimiser asked for (cached repeats included).
        cache_hits: Requests answered from the cache of the last point.
        objective_seconds: Seconds spent inside the objective's evaluations.
        message: The optimiser's termination message.
    """

    f0: float = math.nan
    fmax: float = math.nan
    y: Tensor | None = field(default=None, repr=False, compare=False)
    halfwidth: Tensor | None = field(default=None, repr=False, compare=False)
    final_f: float = math.nan
    num_iters: int = 0
    num_evals: int = 0
    cache_hits: int = 0
    objective_seconds: float = 0.0
    message: str = ""

    @property
    def increase(self) -> float:
        """``fmax - f0``, the largest loss increase found."""
        return self.fmax - self.f0

    @property
    def relative_increase(self) -> float:
        """``100 * (fmax - f0) / (1 + f0)``, Keskar's normalisation."""
        return 100.0 * (self.fmax - self.f0) / (1.0 + self.f0)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict; the ``(p,)`` vectors are summarised by norms."""
        out = dataclasses.replace(self, y=None, halfwidth=None)
        d = Result.to_dict(out)
        d.pop("y", None)
        d.pop("halfwidth", None)
        if self.y is not None and self.halfwidth is not None:
            d["y_norm"] = float(self.y.norm())
            d["halfwidth_norm"] = float(self.halfwidth.norm())
        return d


@dataclass(frozen=True)
class MultistartSharpnessResult(SharpnessResult):
    """Keskar sharpness with extra starts; ``value`` is the best over all of them.

    Attributes:
        baseline: The standard metric (``max_iters`` L-BFGS-B iterations from ``y = 0``).
        start_values: The metric reached from each start; entry 0 is ``baseline``.
        method: ``"lbfgsb"`` (restarts) or ``"pga"`` (projected sign-gradient ascent).
    """

    baseline: float = math.nan
    start_values: tuple[float, ...] = ()
    method: str = ""

    @property
    def improvement(self) -> float:
        """How much higher the extra starts found the metric: ``value - baseline``."""
        return self.value - self.baseline


# ---------------------------------------------------------------------------------------
# Subspaces
# ---------------------------------------------------------------------------------------


def random_subspace(
    n: int,
    p: int = 100,
    *,
    seed: int,
    distribution: SubspaceDistribution = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw a random ``n x p`` matrix (unit-norm columns by default) for the subspace metric.

    Keskar et al. do not give the distribution. ``"uniform"``: entries ``U[0, 1)``, then
    each column scaled to unit norm (what public reimplementations use; the columns share a
    large common component along the all-ones direction, ``cond(A) ~ sqrt(3p)``).
    ``"gaussian"``: entries ``N(0, 1)``, each column scaled to unit norm (nearly
    orthonormal columns). ``"uniform-raw"``: entries ``U[0, 1)`` left unscaled (columns of
    norm about ``sqrt(n/3)``), the literal reading of the paper's "random matrix" with no
    normalisation stated; on F1 it moves every weight by ~0.05 and saturates the metric
    (about 250 for both SB and LB), where unit-norm columns give values near 0; neither
    matches the paper's Table 4. Drawn on the CPU from
    ``torch.Generator().manual_seed(seed)`` and then moved, so the matrix does not depend
    on the device.

    Args:
        n: Number of parameters (rows).
        p: Subspace dimension (columns), ``1 <= p <= n``.
        seed: Random seed.
        distribution: ``"uniform"``, ``"gaussian"`` or ``"uniform-raw"``.
        dtype: Floating dtype of the result (the objective's).
        device: Device of the result.

    Returns:
        ``A`` of shape ``(n, p)``.

    Raises:
        ConfigError: If ``p`` is not in ``[1, n]`` or the distribution is unknown.
    """
    if not 1 <= p <= n:
        raise ConfigError(f"subspace dimension p must be in [1, n={n}], got {p}")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"unknown subspace distribution {distribution!r}; choose one of {DISTRIBUTIONS}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    draw = torch.randn if distribution == "gaussian" else torch.rand
    a = draw(n, p, generator=gen, dtype=dtype)  # (n, p)
    if distribution == "uniform-raw":
        return a.to(device) if device is not None else a
    sq = torch.zeros(p, dtype=torch.float64)
    for s in _row_blocks(n, 65536):  # float64 sums without a float64 copy of A
        sq += a[s : s + 65536].double().square().sum(0)
    a /= sq.sqrt().to(dtype)
    return a.to(device) if device is not None else a


def _row_blocks(n: int, block_rows: int) -> range:
    return range(0, n, block_rows)


def subspace_coordinates(A: Tensor, x: Tensor, *, block_rows: int = 65536) -> Tensor:
    """Return ``A^+ x`` (shape ``(p,)``, float64) without forming a pseudo-inverse.

    ``A^+ x`` is the least-squares solution ``c`` of ``A c ~ x`` (``A`` of full column
    rank). ``G = A^T A`` and ``A^T x`` are accumulated in float64 over row blocks, ``G`` is
    factored ``R^T R`` (Cholesky, ``p x p``) and ``c = G^{-1} A^T x`` is refined once with
    the residual ``r = x - A c`` (corrected semi-normal equations: Bjorck, "Stability
    analysis of the method of seminormal equations", 1987), which gives QR accuracy.
    Memory beyond ``A`` is ``O(block_rows * p)``.

    Args:
        A: Matrix ``(n, p)``, ``p <= n``, of full column rank.
        x: Vector ``(n,)``.
        block_rows: Rows converted to float64 at a time.

    Returns:
        ``A^+ x`` in float64 on ``A``'s device.

    Raises:
        ConfigError: If the shapes do not match or ``A`` is (numerically) rank deficient.
    """
    if A.ndim != 2 or A.shape[0] != x.shape[0] or A.shape[1] > A.shape[0]:
        raise ConfigError(
            f"A must be an (n, p) matrix with p <= n = {x.shape[0]} rows, "
            f"got shape {tuple(A.shape)}"
        )
    n, p = A.shape
    gram = torch.zeros(p, p, dtype=torch.float64, device=A.device)
    atx = torch.zeros(p, dtype=torch.float64, device=A.device)
    for s in _row_blocks(n, block_rows):
        blk = A[s : s + block_rows].double()  # (b, p)
        gram += blk.T @ blk
        atx += blk.T @ x[s : s + block_rows].double()
    evals = torch.linalg.eigvalsh(gram)
    if not evals[0] > 1e-14 * evals[-1]:
        raise ConfigError(
            f"A is rank deficient (cond(A)^2 ~ {float(evals[-1] / max(evals[0], 1e-300)):.3g}); "
            "its columns must be linearly independent"
        )
    chol = torch.linalg.cholesky(gram)
    c = torch.cholesky_solve(atx[:, None], chol)[:, 0]
    atr = torch.zeros(p, dtype=torch.float64, device=A.device)
    for s in _row_blocks(n, block_rows):
        blk = A[s : s + block_rows].double()
        atr += blk.T @ (x[s : s + block_rows].double() - blk @ c)
    return c + torch.cholesky_solve(atr[:, None], chol)[:, 0]


# ---------------------------------------------------------------------------------------
# Keskar sharpness
# ---------------------------------------------------------------------------------------


def _check_normalisation(f0: float) -> None:
    if not 1.0 + f0 > 0:
        raise ConfigError(
            f"Keskar's normalisation 1 + f(x) must be positive, got f(x) = {f0:.6g}; the "
            "metric is defined for nonnegative losses (shift the loss by a constant)"
        )


def resolve_subspace(
    obj: Objective,
    A: Tensor | None,
    p: int | None,
    seed: int | None,
    distribution: str,
) -> tuple[Tensor | None, dict[str, Any]]:
    """Return ``(A or None, settings)`` for the full space, a given or a drawn subspace.

    Raises:
        ConfigError: For both ``A`` and ``p``, a malformed ``A``, or ``p`` without a seed.
    """
    if A is not None and p is not None:
        raise ConfigError("give either a subspace matrix A or its dimension p (drawn), not both")
    if A is not None:
        if A.ndim != 2 or A.shape[0] != obj.dim or not 1 <= A.shape[1] <= obj.dim:
            raise ConfigError(
                f"A must have shape (n, p) with n = {obj.dim} and 1 <= p <= n, "
                f"got {tuple(A.shape)}"
            )
        a = A.detach().to(device=obj.device, dtype=obj.dtype)
        return a, {"space": "subspace", "p": int(A.shape[1]), "subspace": "given",
                   "subspace_seed": seed}
    if p is None:
        return None, {"space": "full", "p": obj.dim, "subspace": None, "subspace_seed": None}
    if seed is None:
        raise ConfigError("a random subspace needs a seed (pass seed=...) to be reproducible")
    a = random_subspace(
        obj.dim, p, seed=seed, distribution=distribution,  # type: ignore[arg-type]
        dtype=obj.dtype, device=obj.device,
    )
    return a, {"space": "subspace", "p": int(p), "subspace": distribution,
               "subspace_seed": int(seed)}


def keskar_halfwidth(x: Tensor, eps: float, A: Tensor | None) -> np.ndarray:
    """The paper's box half-widths ``eps * (|(A^+ x)_i| + 1)`` as float64 numpy ``(p,)``."""
    c = x.detach().double() if A is None else subspace_coordinates(A, x)
    return (eps * (c.abs() + 1.0)).cpu().numpy()


def _prepare(
    loss: LossFn | Objective,
    x: Tensor,
    A: Tensor | None,
    p: int | None,
    seed: int | None,
    distribution: str,
) -> tuple[Objective, Tensor, Tensor | None, dict[str, Any]]:
    obj = as_objective(loss, x)
    x = x.detach().to(device=obj.device, dtype=obj.dtype)
    a, sub = resolve_subspace(obj, A, p, seed, distribution)
    return obj, x, a, sub


@renamed(maxiter="max_iters")
def keskar_sharpness(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    eps: float = 1e-3,
    A: Tensor | None = None,
    p: int | None = None,
    seed: int | None = None,
    distribution: SubspaceDistribution = "uniform",
    max_iters: int = 10,
    maxcor: int = 10,
    ftol: float = 0.0,
    gtol: float = 0.0,
    driver: Driver = "auto",
) -> SharpnessResult:
    """Keskar et al.'s sharpness ``phi(x, f; eps, A)`` (Metric 2.1).

    ``phi = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x))`` with
    ``C_eps = {|y_i| <= eps (|(A^+ x)_i| + 1)}``; the maximum is approximated by
    ``max_iters`` L-BFGS-B iterations from ``y = 0`` (10 in the paper) and is the largest
    ``f`` among all points evaluated. ``f`` is the objective as given: for a
    :class:`~sharpminima.landscape.objective.ModelObjective`, the mean loss over its data in
    its BatchNorm mode, both recorded in ``settings`` (Keskar et al.'s Keras code used batch
    statistics; eval-mode BN inflates the value many-fold, see PAPER.md).

    The tolerances default to zero so that only the iteration budget ends the search: at a
    well-trained minimum the gradient can be below scipy's default ``gtol = 1e-5`` at the
    start, which would stop L-BFGS-B before its first step and report 0. Exactly at a
    stationary point (gradient 0) L-BFGS-B cannot move and the metric is 0; see
    :func:`keskar_sharpness_multistart`. ``converged`` is L-BFGS-B's own success flag, so it
    is ``False`` whenever the iteration budget (the metric's definition) ended the search.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point ``(n,)``.
        eps: Box size (the paper uses 1e-3 and 5e-4).
        A: Subspace matrix ``(n, p)`` of full column rank; ``None`` with ``p=None`` means the
            full space (``A = I``).
        p: Draw ``A`` with :func:`random_subspace` (``p`` columns; needs ``seed``).
        seed: Seed of the drawn subspace (recorded; also recorded if ``A`` is given).
        distribution: Distribution of the drawn subspace, ``"uniform"``, ``"gaussian"`` or
            ``"uniform-raw"`` (see :func:`random_subspace`).
        max_iters: L-BFGS-B iterations.
        maxcor: L-BFGS-B memory (scipy's default 10).
        ftol: L-BFGS-B relative-reduction tolerance (0: off).
        gtol: L-BFGS-B projected-gradient tolerance (0: off).
        driver: ``"auto"`` (the direct ``setulb`` driver when available), ``"setulb"`` or
            ``"scipy"`` (:func:`scipy.optimize.minimize`); the iterates are the same.

    Returns:
        :class:`SharpnessResult`; ``settings`` holds eps, the space and subspace
        distribution and seed, max_iters, the driver and the objective's settings (BN mode,
        number of samples, chunk size).

    Raises:
        ConfigError: For a nonpositive eps or max_iters, a malformed or rank-deficient ``A``,
            both ``A`` and ``p``, ``p`` without ``seed``, an unknown distribution or
            driver, or a loss that is not finite in the box.
    """
    check_box_args(eps, max_iters)
    drv = resolve_driver(driver)
    obj, x, a, sub = _prepare(loss, x, A, p, seed, distribution)
    with CostMeter(obj) as meter:
        search = BoxSearch(obj, x, a, keskar_halfwidth(x, eps, a))
        y0 = np.zeros(search.dim)
        f0, _ = search.value_and_grad(y0)
        _check_normalisation(f0)
        run = run_lbfgsb(search, y0, max_iters=max_iters, maxcor=maxcor, ftol=ftol, gtol=gtol,
                         driver=drv)
    settings = {
        "metric": "keskar", "eps": float(eps), **sub, "max_iters": max_iters, "maxcor": maxcor,
        "ftol": ftol, "gtol": gtol, "optimizer": "L-BFGS-B", "driver": drv,
        "dtype": str(obj.dtype), **objective_settings(obj),
    }
    fields = search.result_fields(f0)
    return SharpnessResult(
        value=100.0 * (fields["fmax"] - f0) / (1.0 + f0),
        settings=settings,
        cost=meter.cost,
        converged=run.success,
        seed=seed,
        final_f=run.final_f,
        num_iters=run.num_iters,
        message=run.message,
        **fields,
    )


@renamed(maxiter="max_iters")
def keskar_sharpness_multistart(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    eps: float = 1e-3,
    A: Tensor | None = None,
    p: int | None = None,
    seed: int = 0,
    distribution: SubspaceDistribution = "uniform",
    method: MultistartMethod = "lbfgsb",
    num_starts: int = 4,
    max_iters: int = 10,
    pga_steps: int = 10,
    pga_step: float = 0.5,
    maxcor: int = 10,
    driver: Driver = "auto",
) -> MultistartSharpnessResult:
    """Keskar sharpness searched harder: the standard run plus extra starts.

    Start 0 is the standard metric (:func:`keskar_sharpness`: ``max_iters`` L-BFGS-B
    iterations from ``y = 0``), recorded as ``baseline``. Then ``num_starts - 1`` extra
    searches over the same box:

    * ``method="lbfgsb"``: L-BFGS-B (``max_iters`` iterations) from points drawn uniformly in
      the box.
    * ``method="pga"``: projected sign-gradient ascent, ``pga_steps`` steps of
      ``y <- clip(y + pga_step * halfwidth * sign(grad))``, the first extra start from
      ``y = 0`` and the others from uniform random points in the box.

    ``value`` is the metric at the best point evaluated by any start; ``improvement``
    (``value - baseline``) says how far 10 L-BFGS-B iterations fall short of the maximum
    that more search finds. Random starts matter most at (near-)stationary points, where
    L-BFGS-B from ``y = 0`` barely moves.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point ``(n,)``.
        eps: Box size.
        A: Subspace matrix ``(n, p)``, or ``None``.
        p: Draw ``A`` with :func:`random_subspace` instead.
        seed: Seed of the random starts (and of the drawn subspace).
        distribution: Distribution of the drawn subspace.
        method: ``"lbfgsb"`` or ``"pga"``.
        num_starts: Starts in all, the standard one included (``>= 1``).
        max_iters: L-BFGS-B iterations per L-BFGS-B start.
        pga_steps: Gradient steps per PGA start (``>= 1``).
        pga_step: PGA step as a fraction of the box half-width (``> 0``).
        maxcor: L-BFGS-B memory.
        driver: L-BFGS-B driver (see :func:`keskar_sharpness`).

    Returns:
        :class:`MultistartSharpnessResult`.

    Raises:
        ConfigError: As :func:`keskar_sharpness`, and for an unknown method, ``num_starts``
            or ``pga_steps`` below 1, or a nonpositive ``pga_step``.
    """
    check_box_args(eps, max_iters)
    if method not in MULTISTART_METHODS:
        raise ConfigError(
            f"unknown multistart method {method!r}; choose one of {MULTISTART_METHODS}"
        )
    if not (isinstance(num_starts, int) and num_starts >= 1):
        raise ConfigError(f"num_starts must be a positive integer, got {num_starts!r}")
    if not (isinstance(pga_steps, int) and pga_steps >= 1) or not pga_step > 0:
        raise ConfigError(
            f"pga_steps must be a positive integer and pga_step positive, got {pga_steps!r} "
            f"and {pga_step!r}"
        )
    drv = resolve_driver(driver)
    obj, x, a, sub = _prepare(loss, x, A, p, seed, distribution)
    rng = np.random.default_rng(seed)

    def to_metric(f: float) -> float:
        return 100.0 * (f - f0) / (1.0 + f0)

    with CostMeter(obj) as meter:
        search = BoxSearch(obj, x, a, keskar_halfwidth(x, eps, a))
        y0 = np.zeros(search.dim)
        f0, _ = search.value_and_grad(y0)
        _check_normalisation(f0)
        base = run_lbfgsb(search, y0, max_iters=max_iters, maxcor=maxcor, driver=drv)
        start_values = [to_metric(search.best_f)]
        for k in range(1, num_starts):
            search.segment_best = -math.inf
            if method == "pga" and k == 1:
                start = np.zeros(search.dim)
            else:
                start = rng.uniform(search.lower, search.halfwidth)
            if method == "lbfgsb":
                run_lbfgsb(search, start, max_iters=max_iters, maxcor=maxcor, driver=drv)
            else:
                run_pga(search, start, num_steps=pga_steps, step=pga_step)
            start_values.append(to_metric(search.segment_best))
    settings = {
        "metric": "keskar", "eps": float(eps), **sub, "max_iters": max_iters, "maxcor": maxcor,
        "optimizer": "L-BFGS-B", "driver": drv, "multistart": method,
        "num_starts": num_starts, "pga_steps": pga_steps if method == "pga" else None,
        "pga_step": pga_step if method == "pga" else None, "start_distribution": "uniform-box",
        "dtype": str(obj.dtype), **objective_settings(obj),
    }
    fields = search.result_fields(f0)
    return MultistartSharpnessResult(
        value=to_metric(fields["fmax"]),
        settings=settings,
        cost=meter.cost,
        converged=base.success,
        seed=seed,
        final_f=base.final_f,
        num_iters=base.num_iters,
        message=base.message,
        baseline=start_values[0],
        start_values=tuple(start_values),
        method=method,
        **fields,
    )


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class KeskarParams(MeasureParams):
    """Parameters of ``keskar_sharpness``: Metric 2.1 in the full space or a random subspace.

    Attributes:
        eps: Box size (the paper: 1e-3 and 5e-4).
        subspace: ``"full"`` (``A = I``) or ``"random"`` (``p`` random columns).
        p: Random subspace dimension (the paper: 100).
        seed: Seed of the random subspace.
        distribution: The random subspace's entries (see :func:`random_subspace`).
        max_iters: L-BFGS-B iterations (the paper: 10).
    """

    eps: float = 1e-3
    subspace: Literal["full", "random"] = "full"
    p: int | None = 100
    seed: int | None = 0
    distribution: Literal["uniform", "gaussian", "uniform-raw"] | None = "uniform"
    max_iters: int = 10

    def validate(self) -> None:
        """Eps > 0, max_iters >= 1, p >= 1."""
        check_box_args(self.eps, self.max_iters)
        if self.subspace == "random" and (self.p is None or self.p < 1 or self.seed is None
                                          or self.distribution is None):
            raise ConfigError("a random subspace needs p >= 1, a seed and a distribution")

    def canonical(self) -> dict[str, Any]:
        """The subspace settings do not matter in the full space."""
        out = dataclasses.asdict(self)
        if self.subspace == "full":
            out.update(p=None, seed=None, distribution=None)
        return out


@dataclass(frozen=True)
class MultistartParams(KeskarParams):
    """Parameters of ``keskar_sharpness_multistart`` (see :func:`keskar_sharpness_multistart`)."""

    method: Literal["lbfgsb", "pga"] = "lbfgsb"
    num_starts: int = 4
    pga_steps: int = 10
    pga_step: float = 0.5

    def validate(self) -> None:
        """As Keskar's, and at least one start and step."""
        super().validate()
        if self.num_starts < 1 or self.pga_steps < 1 or not self.pga_step > 0:
            raise ConfigError("num_starts and pga_steps must be positive integers, pga_step positive")

    def canonical(self) -> dict[str, Any]:
        """The subspace settings do not matter in the full space (the seed of the starts does)."""
        out = dataclasses.asdict(self)
        if self.subspace == "full":
            out.update(p=None, distribution=None)
        return out


#: The last random subspace drawn (shape, seed and distribution -> matrix): drawing F1's
#: 1.46M x 100 matrix costs seconds, and a study measures many runs in the same subspace.
_DRAWN: dict[tuple, Tensor] = {}


def drawn_subspace(n: int, p: int, seed: int, distribution: str, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    """:func:`random_subspace`, remembering the last matrix drawn (one at a time)."""
    key = (n, p, seed, distribution, dtype, str(device))
    if key not in _DRAWN:
        _DRAWN.clear()
        _DRAWN[key] = random_subspace(n, p, seed=seed, distribution=distribution,  # type: ignore[arg-type]
                                      dtype=dtype, device=device)
    return _DRAWN[key]


def _subspace_args(inputs: Inputs, p: KeskarParams) -> dict[str, Any]:
    if p.subspace == "full":
        return {}
    assert p.p is not None and p.seed is not None and p.distribution is not None
    obj = inputs.objective
    return {"A": drawn_subspace(obj.dim, p.p, p.seed, p.distribution, obj.dtype, obj.device)}


def _keskar(inputs: Inputs, p: KeskarParams) -> SharpnessResult:
    seed = p.seed if p.subspace == "random" else None
    return keskar_sharpness(inputs.objective, inputs.x, eps=p.eps, max_iters=p.max_iters, seed=seed,
                            **_subspace_args(inputs, p))


def _multistart(inputs: Inputs, p: MultistartParams) -> MultistartSharpnessResult:
    return keskar_sharpness_multistart(
        inputs.objective, inputs.x, eps=p.eps, max_iters=p.max_iters, seed=p.seed if p.seed is not None else 0,
        method=p.method, num_starts=p.num_starts, pga_steps=p.pga_steps, pga_step=p.pga_step,
        **_subspace_args(inputs, p),
    )


register_measure(Measure(
    "keskar_sharpness", KeskarParams, _keskar,
    "Keskar et al.'s Metric 2.1: the largest loss increase in a box of size eps, in percent",
    aliases=("sharpness",), passes=lambda p: p.max_iters + 3,
))
register_measure(Measure(
    "keskar_sharpness_multistart", MultistartParams, _multistart,
    "Metric 2.1 searched from several starts (L-BFGS-B restarts or sign-gradient ascent)",
    aliases=("sharpness-multistart",), passes=lambda p: p.num_starts * (p.max_iters + 3),
))
