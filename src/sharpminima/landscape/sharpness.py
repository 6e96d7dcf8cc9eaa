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
from torch import Tensor

from sharpminima.deprecation import renamed
from sharpminima.errors import ConfigError
from sharpminima.landscape.box_search import (
    BoxSearch,
    Driver,
    check_box_args,
    check_escalation_args,
    escalate,
    resolve_driver,
    run_lbfgsb,
    run_pga,
)
from sharpminima.landscape.objective import LossFn, Objective, as_objective, objective_settings
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, register_measure
from sharpminima.landscape.results import CostMeter, Result
from sharpminima.landscape.subspace import (
    SubspaceDistribution,
    drawn_subspace,
    random_subspace,
    subspace_coordinates,
)

MultistartMethod = Literal["lbfgsb", "pga"]
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
        search: Which path ran: ``"lbfgsb"`` (the paper's search from ``y = 0`` alone),
            ``"lbfgsb+restarts"`` (the start was stuck, so more starts were searched) or
            ``"multistart-lbfgsb"``/``"multistart-pga"`` (asked for several starts).
        num_starts: Searches run.
        start_values: The metric each search reached, the one from ``y = 0`` first (empty
            for a single search).
        spread: Largest minus smallest metric over the searches from random starts (0 if
            none ran).
        disagree: Whether ``spread`` exceeds ``agree_tol`` times the best value: the starts
            found different local maxima, so read ``value`` as a lower bound.
        escalation: Why the search was escalated (empty if it was not).
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
    search: str = "lbfgsb"
    num_starts: int = 1
    start_values: tuple[float, ...] = ()
    spread: float = 0.0
    disagree: bool = False
    escalation: str = ""

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
    method: str = ""

    @property
    def improvement(self) -> float:
        """How much higher the extra starts found the metric: ``value - baseline``."""
        return self.value - self.baseline


def search_note(result: dict[str, Any]) -> str:
    """How a box maximum was searched, in words, from a result's ``to_dict()``.

    Empty for the paper's single search from ``y = 0``.
    """
    search = result.get("search", "lbfgsb")
    if search == "lbfgsb":
        return ""
    parts = [f"{search}, {result.get('num_starts', 1)} starts, spread {result.get('spread', 0.0):.3g}"]
    if result.get("disagree"):
        parts.append("the starts disagree: read the value as a lower bound")
    if result.get("escalation"):
        parts.append(f"escalated: {result['escalation']}")
    return "; ".join(parts)


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
    escalate_stuck: bool = True,
    extra_starts: int = 8,
    agree_tol: float = 0.05,
) -> SharpnessResult:
    """Keskar et al.'s sharpness ``phi(x, f; eps, A)`` (Metric 2.1).

    ``phi = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x))`` with
    ``C_eps = {|y_i| <= eps (|(A^+ x)_i| + 1)}``; the maximum is approximated by
    ``max_iters`` L-BFGS-B iterations from ``y = 0`` (10 in the paper) and is the largest
    ``f`` among all points evaluated. ``f`` is the objective as given: for a
    :class:`~sharpminima.landscape.objective.ModelObjective`, the mean loss over its data in
    its BatchNorm mode, both recorded in ``settings`` (Keskar et al.'s Keras code used batch
    statistics; eval-mode BN inflates the value many-fold: 10-100x at F1 minima, README).

    The tolerances default to zero so that only the iteration budget ends the search: at a
    well-trained minimum the gradient can be below scipy's default ``gtol = 1e-5`` at the
    start, which would stop L-BFGS-B before its first step and report 0. ``converged`` is
    L-BFGS-B's own success flag, so it is ``False`` whenever the iteration budget (the
    metric's definition) ended the search.

    Stuck starts are escalated. Exactly at a stationary point (a bowl's minimum, a saddle,
    a symmetric point) the gradient gives L-BFGS-B no direction: it stops at ``y = 0`` and
    the paper's procedure reports 0 although the box maximum grows like ``eps^2``. When
    the search from ``y = 0`` found no measurable ascent, or converged early with the best
    point inside half the box, ``extra_starts`` more L-BFGS-B searches (``max_iters``
    iterations each) start from random vertices and random points of the box; ``value`` is
    the best over all. The result says which path ran (``search``, ``escalation``), the
    metric each start reached (``start_values``), their ``spread`` and whether they
    ``disagree`` by more than ``agree_tol`` of the best value (several local maxima: read
    the value as a lower bound). A start that ascends, as at every trained minimum we
    have measured, costs nothing extra and gives the paper's value.

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
        escalate_stuck: Search from more starts when the start from ``y = 0`` is stuck
            (``False``: the paper's procedure alone, 0 at a stationary point).
        extra_starts: Starts added by an escalation (random vertices and points of the
            box, seeded by ``seed`` or 0).
        agree_tol: Relative spread of the extra starts' values above which ``disagree``
            is set.

    Returns:
        :class:`SharpnessResult`; ``settings`` holds eps, the space and subspace
        distribution and seed, max_iters, the driver, the escalation settings and the
        objective's settings (BN mode, number of samples, chunk size).

    Raises:
        ConfigError: For a nonpositive eps or max_iters, a malformed or rank-deficient ``A``,
            both ``A`` and ``p``, ``p`` without ``seed``, an unknown distribution or
            driver, negative ``extra_starts`` or ``agree_tol``, or a loss that is not
            finite in the box.
    """
    check_box_args(eps, max_iters)
    check_escalation_args(extra_starts, agree_tol)
    drv = resolve_driver(driver)
    obj, x, a, sub = _prepare(loss, x, A, p, seed, distribution)
    with CostMeter(obj) as meter:
        search = BoxSearch(obj, x, a, keskar_halfwidth(x, eps, a))
        y0 = np.zeros(search.dim)
        f0, _ = search.value_and_grad(y0)
        _check_normalisation(f0)
        run = run_lbfgsb(search, y0, max_iters=max_iters, maxcor=maxcor, ftol=ftol, gtol=gtol,
                         driver=drv)
        esc = escalate(
            search, f0, run, lambda f: 100.0 * (f - f0) / (1.0 + f0), enabled=escalate_stuck,
            extra_starts=extra_starts, agree_tol=agree_tol, seed=0 if seed is None else seed,
            max_iters=max_iters, maxcor=maxcor, driver=drv,
        )
    settings = {
        "metric": "keskar", "eps": float(eps), **sub, "max_iters": max_iters, "maxcor": maxcor,
        "ftol": ftol, "gtol": gtol, "optimizer": "L-BFGS-B", "driver": drv,
        "escalate": bool(escalate_stuck), "extra_starts": extra_starts,
        "agree_tol": float(agree_tol), "dtype": str(obj.dtype), **objective_settings(obj),
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
        **esc.fields(),
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
    agree_tol: float = 0.05,
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
        agree_tol: Relative spread of the extra starts' values above which ``disagree``
            is set.

    Returns:
        :class:`MultistartSharpnessResult`; ``spread`` and ``disagree`` are over the extra
        starts.

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
    check_escalation_args(0, agree_tol)
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
        "agree_tol": float(agree_tol), "dtype": str(obj.dtype), **objective_settings(obj),
    }
    fields = search.result_fields(f0)
    best = to_metric(fields["fmax"])
    extra = start_values[1:]
    spread = max(extra) - min(extra) if extra else 0.0
    return MultistartSharpnessResult(
        value=best,
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
        search=f"multistart-{method}",
        num_starts=num_starts,
        spread=spread,
        disagree=bool(spread > agree_tol * abs(best)),
        **fields,
    )


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class BoxParams(MeasureParams):
    """The box and search of Metric 2.1, full space or a random subspace.

    Attributes:
        eps: Box size (the paper: 1e-3 and 5e-4).
        subspace: ``"full"`` (``A = I``) or ``"random"`` (``p`` random columns).
        p: Random subspace dimension (the paper: 100).
        seed: Seed of the random subspace (and of any extra starts).
        distribution: The random subspace's entries (see :func:`random_subspace`).
        max_iters: L-BFGS-B iterations (the paper: 10).
        agree_tol: Relative spread of the extra starts above which they disagree.
    """

    eps: float = 1e-3
    subspace: Literal["full", "random"] = "full"
    p: int | None = 100
    seed: int | None = 0
    distribution: Literal["uniform", "gaussian", "uniform-raw"] | None = "uniform"
    max_iters: int = 10
    agree_tol: float = 0.05

    def validate(self) -> None:
        """Eps > 0, max_iters >= 1, p >= 1, agree_tol >= 0."""
        check_box_args(self.eps, self.max_iters)
        check_escalation_args(0, self.agree_tol)
        if self.subspace == "random" and (self.p is None or self.p < 1 or self.seed is None
                                          or self.distribution is None):
            raise ConfigError("a random subspace needs p >= 1, a seed and a distribution")


@dataclass(frozen=True)
class KeskarParams(BoxParams):
    """Parameters of ``keskar_sharpness`` (see :func:`keskar_sharpness`).

    Attributes:
        escalate: Search from more starts when the start from ``y = 0`` is stuck.
        extra_starts: Starts added by an escalation.
    """

    escalate: bool = True
    extra_starts: int = 8

    def validate(self) -> None:
        """As the box's, and ``extra_starts >= 0``."""
        super().validate()
        check_escalation_args(self.extra_starts, self.agree_tol)

    def canonical(self) -> dict[str, Any]:
        """The subspace settings do not matter in the full space."""
        out = dataclasses.asdict(self)
        if self.subspace == "full":
            out.update(p=None, seed=None, distribution=None)
        return out


@dataclass(frozen=True)
class MultistartParams(BoxParams):
    """Parameters of ``keskar_sharpness_multistart`` (see :func:`keskar_sharpness_multistart`)."""

    method: Literal["lbfgsb", "pga"] = "lbfgsb"
    num_starts: int = 4
    pga_steps: int = 10
    pga_step: float = 0.5

    def validate(self) -> None:
        """As the box's, and at least one start and step."""
        super().validate()
        if self.num_starts < 1 or self.pga_steps < 1 or not self.pga_step > 0:
            raise ConfigError("num_starts and pga_steps must be positive integers, pga_step positive")

    def canonical(self) -> dict[str, Any]:
        """The subspace settings do not matter in the full space (the seed of the starts does)."""
        out = dataclasses.asdict(self)
        if self.subspace == "full":
            out.update(p=None, distribution=None)
        return out


def _subspace_args(inputs: Inputs, p: BoxParams) -> dict[str, Any]:
    if p.subspace == "full":
        return {}
    assert p.p is not None and p.seed is not None and p.distribution is not None
    obj = inputs.objective
    return {"A": drawn_subspace(obj.dim, p.p, p.seed, p.distribution, obj.dtype, obj.device)}


def _keskar(inputs: Inputs, p: KeskarParams) -> SharpnessResult:
    seed = p.seed if p.subspace == "random" else None
    return keskar_sharpness(
        inputs.objective, inputs.x, eps=p.eps, max_iters=p.max_iters, seed=seed,
        escalate_stuck=p.escalate, extra_starts=p.extra_starts, agree_tol=p.agree_tol,
        **_subspace_args(inputs, p),
    )


def _multistart(inputs: Inputs, p: MultistartParams) -> MultistartSharpnessResult:
    return keskar_sharpness_multistart(
        inputs.objective, inputs.x, eps=p.eps, max_iters=p.max_iters,
        seed=p.seed if p.seed is not None else 0,
        method=p.method, num_starts=p.num_starts, pga_steps=p.pga_steps, pga_step=p.pga_step,
        agree_tol=p.agree_tol, **_subspace_args(inputs, p),
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
