"""The box-constrained maximiser behind Keskar sharpness and adaptive sharpness.

``max_{y in box} f(x + A y)`` for a box ``|y_i| <= halfwidth_i`` around ``y = 0``, where
``f`` is a counted objective and ``A`` an ``n x p`` matrix (``None``: the identity, the
full space). :class:`BoxSearch` evaluates ``f(x + A y)`` and its gradient ``A^T grad f`` in
box coordinates, tracks the best (largest) value found and where, and caches the last
point; :func:`run_lbfgsb` (L-BFGS-B on ``-f``, the paper's maximiser) and :func:`run_pga`
(projected sign-gradient ascent) drive it.

* Every evaluated point lies in the box (L-BFGS-B keeps its iterates feasible; each ``y``
  is also clipped before use, a guard against rounding).
* Each point is set absolutely, ``x + A y``, in the objective's dtype (in the full space
  ``x + y`` is formed in float64 and rounded once).
* The L-BFGS-B iterations are those of scipy's implementation (``setulb``). With
  ``driver="auto"`` it is called directly with vectorised bounds:
  :func:`scipy.optimize.minimize` converts ``n`` bounds through Python lists and a Python
  loop, which costs seconds per call for a million parameters. ``driver="scipy"`` uses
  :func:`scipy.optimize.minimize` itself; both produce the same iterates (tested).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import Objective

Driver = Literal["auto", "setulb", "scipy"]
DRIVERS = ("auto", "setulb", "scipy")

# L-BFGS-B's defaults in scipy, used by both drivers.
MAXLS = 20
MAXFUN = 15000


# ---------------------------------------------------------------------------------------


class BoxSearch:
    """``g(y) = f(x + A y)`` on the box ``|y_i| <= halfwidth_i``, for the optimisers.

    Tracks the best (largest) finite ``f`` evaluated and where; caches the last point.

    Args:
        objective: The counted objective ``f``.
        x: Base point ``(n,)`` in the objective's dtype.
        A: ``(n, p)`` matrix, or ``None`` for the identity.
        halfwidth: Box half-widths ``(p,)``, float64 numpy, nonnegative.

    Raises:
        ConfigError: If ``f`` is not finite at a point of the box.
    """

    def __init__(
        self, objective: Objective, x: Tensor, A: Tensor | None, halfwidth: np.ndarray
    ) -> None:
        self.objective = objective
        self.x = x
        self.A = A
        self.halfwidth = halfwidth
        self.lower = -halfwidth
        self.num_evals = 0
        self.cache_hits = 0
        self.objective_seconds = 0.0
        self.best_f = -math.inf
        self.best_y: np.ndarray | None = None
        self.segment_best = -math.inf
        self._cache_y: np.ndarray | None = None
        self._cache_point: Tensor | None = None
        self._cache_fg: tuple[float, np.ndarray] = (math.nan, np.empty(0))
        # Full space: x + y is formed in float64 and rounded once to the objective's dtype.
        self._x64 = x.double() if A is None and x.dtype != torch.float64 else None

    @property
    def dim(self) -> int:
        """Number of box coordinates ``p``."""
        return int(self.halfwidth.shape[0])

    def point(self, y: np.ndarray) -> Tensor:
        """Return ``x + A y`` in the objective's dtype and device, set from ``x`` absolutely."""
        if self._x64 is not None:  # one rounding: fl(x + y), not fl(x + fl(y))
            yt = torch.from_numpy(y).to(device=self.x.device)
            return (self._x64 + yt).to(self.x.dtype)
        yt = torch.from_numpy(y).to(device=self.x.device, dtype=self.x.dtype)
        return self.x + yt if self.A is None else torch.addmv(self.x, self.A, yt)

    def value_and_grad(self, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Return ``f(x + A y)`` and ``A^T grad f`` (float64 numpy), counting and caching.

        A request is answered from the cache when ``y`` equals the last one, or when the
        point ``x + A y`` rounds to the same vector in the objective's dtype (a line search
        can shrink its steps below the float32 resolution of the parameters).
        """
        self.num_evals += 1
        if self._cache_y is not None and np.array_equal(y, self._cache_y):
            return self._cached()
        y = np.clip(y, self.lower, self.halfwidth)  # feasible by construction; guards rounding
        point = self.point(y)
        if self._cache_point is not None and torch.equal(point, self._cache_point):
            self._cache_y = y.copy()
            return self._cached()
        t0 = time.perf_counter()
        f_t, g_t = self.objective.loss_and_grad(point)
        self.objective_seconds += time.perf_counter() - t0
        f = float(f_t)
        if not math.isfinite(f):
            raise ConfigError(
                f"the loss is not finite ({f}) at a point of the box (|y|_inf = "
                f"{float(np.abs(y).max(initial=0.0)):.3g}); reduce eps"
            )
        gy = g_t if self.A is None else self.A.T @ g_t  # (p,)
        g = gy.detach().to(device="cpu", dtype=torch.float64).numpy()
        if f > self.best_f:
            self.best_f, self.best_y = f, y.copy()
        self.segment_best = max(self.segment_best, f)
        self._cache_y = y.copy()
        self._cache_point = point
        self._cache_fg = (f, g)
        return f, g

    def _cached(self) -> tuple[float, np.ndarray]:
        self.cache_hits += 1
        self.segment_best = max(self.segment_best, self._cache_fg[0])
        return self._cache_fg

    def negated(self, y: np.ndarray) -> tuple[float, np.ndarray]:
        """``(-f, -grad)``: the minimisation problem handed to L-BFGS-B (signs consistent)."""
        f, g = self.value_and_grad(y)
        return -f, -g

    def clip(self, y: np.ndarray) -> np.ndarray:
        """Project ``y`` onto the box."""
        return np.clip(y, self.lower, self.halfwidth)

    def result_fields(self, f0: float) -> dict[str, Any]:
        """The fields of a sharpness result: ``f0``, the best value and point, counters."""
        assert self.best_y is not None  # y = 0 was evaluated first
        return {
            "f0": f0,
            "fmax": self.best_f,
            "y": torch.from_numpy(self.best_y),
            "halfwidth": torch.from_numpy(self.halfwidth),
            "num_evals": self.num_evals,
            "cache_hits": self.cache_hits,
            "objective_seconds": self.objective_seconds,
        }


@dataclass(frozen=True)
class LBFGSBRun:
    """How an L-BFGS-B run ended: ``f`` at its final iterate, iterations, success, message."""

    final_f: float
    num_iters: int
    success: bool
    message: str


def _lbfgsb_setulb(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    y0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    max_iters: int,
    maxcor: int,
    ftol: float,
    gtol: float,
) -> tuple[np.ndarray, float, LBFGSBRun]:
    """Run scipy's L-BFGS-B (``_lbfgsb.setulb``, scipy >= 1.15) with vectorised bounds.

    Mirrors :func:`scipy.optimize._lbfgsb_py._minimize_lbfgsb` step for step, minus its
    per-coordinate Python loop over the bounds.
    """
    from scipy.optimize import _lbfgsb  # private: checked by setulb_available()
    from scipy.optimize._lbfgsb_py import status_messages, task_messages

    n, m = y0.shape[0], maxcor
    nbd = np.full(n, 2, dtype=np.int32)  # every coordinate has both bounds
    x = np.clip(y0, lower, upper).astype(np.float64, copy=True)
    f: Any = np.array(0.0, dtype=np.float64)
    g = np.zeros(n, dtype=np.float64)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, dtype=np.float64)
    iwa = np.zeros(3 * n, dtype=np.int32)
    task = np.zeros(2, dtype=np.int32)
    ln_task = np.zeros(2, dtype=np.int32)
    lsave = np.zeros(4, dtype=np.int32)
    isave = np.zeros(44, dtype=np.int32)
    dsave = np.zeros(29, dtype=np.float64)
    factr = ftol / np.finfo(float).eps
    lower = np.ascontiguousarray(lower, dtype=np.float64)
    upper = np.ascontiguousarray(upper, dtype=np.float64)
    nit = nfev = 0
    while True:
        _lbfgsb.setulb(
            m, x, lower, upper, nbd, f, g, factr, gtol, wa, iwa, task, lsave, isave, dsave,
            MAXLS, ln_task,
        )
        if task[0] == 3:  # FG: f and g wanted at x
            f, g = fun(x)
            g = np.ascontiguousarray(g, dtype=np.float64)
            nfev += 1
        elif task[0] == 1:  # NEW_X: an iteration is complete
            nit += 1
            if nit >= max_iters:
                task[0], task[1] = 5, 504
            elif nfev > MAXFUN:
                task[0], task[1] = 5, 502
        else:
            break
    message = status_messages[int(task[0])] + ": " + task_messages[int(task[1])]
    return x, float(f), LBFGSBRun(float(f), nit, bool(task[0] == 4), message)


def _lbfgsb_scipy(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    y0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    max_iters: int,
    maxcor: int,
    ftol: float,
    gtol: float,
) -> tuple[np.ndarray, float, LBFGSBRun]:
    """The same problem through :func:`scipy.optimize.minimize` (the public reference path)."""
    from scipy.optimize import Bounds, minimize

    res = minimize(
        fun, y0, jac=True, method="L-BFGS-B", bounds=Bounds(lower, upper),
        options={"maxiter": max_iters, "maxcor": maxcor, "ftol": ftol, "gtol": gtol,
                 "maxls": MAXLS, "maxfun": MAXFUN},
    )
    return res.x, float(res.fun), LBFGSBRun(float(res.fun), int(res.nit), bool(res.success),
                                       str(res.message))


def setulb_available() -> bool:
    """Whether scipy's C L-BFGS-B (``_lbfgsb.setulb`` with ``ln_task``, scipy >= 1.15) is usable."""
    try:
        import scipy
        from scipy.optimize import _lbfgsb
        from scipy.optimize._lbfgsb_py import status_messages, task_messages  # noqa: F401
    except ImportError:
        return False
    major, minor = (int(v) for v in scipy.__version__.split(".")[:2])
    doc = getattr(_lbfgsb.setulb, "__doc__", "") or ""
    return (major, minor) >= (1, 15) and "ln_task" in doc


def resolve_driver(driver: str) -> str:
    """The L-BFGS-B driver to use: ``"setulb"`` where scipy has it, else ``"scipy"``.

    Raises:
        ConfigError: For an unknown driver, or ``"setulb"`` on an older scipy.
    """
    if driver not in DRIVERS:
        raise ConfigError(f"unknown L-BFGS-B driver {driver!r}; choose one of {DRIVERS}")
    if driver == "auto":
        return "setulb" if setulb_available() else "scipy"
    if driver == "setulb" and not setulb_available():
        raise ConfigError(
            "driver='setulb' needs scipy >= 1.15 (its C L-BFGS-B); use driver='scipy'"
        )
    return driver


def run_lbfgsb(
    search: BoxSearch,
    y0: np.ndarray,
    *,
    max_iters: int,
    maxcor: int = 10,
    ftol: float = 0.0,
    gtol: float = 0.0,
    driver: str = "setulb",
) -> LBFGSBRun:
    """Maximise ``f`` over the box from ``y0`` with L-BFGS-B on ``(-f, -grad f)``."""
    fn = _lbfgsb_setulb if driver == "setulb" else _lbfgsb_scipy
    y_final, neg_f, run = fn(
        search.negated, y0, search.lower, search.halfwidth,
        max_iters=max_iters, maxcor=maxcor, ftol=ftol, gtol=gtol,
    )
    return dataclasses.replace(run, final_f=-neg_f)


def run_pga(search: BoxSearch, y0: np.ndarray, *, num_steps: int, step: float) -> None:
    """Projected sign-gradient ascent on the box (PGD of the adversarial literature).

    ``y <- clip(y + step * halfwidth * sign(grad), box)``: the steepest-ascent step for the
    box's scaled infinity norm; ``num_steps`` steps after the evaluation at ``y0``.
    """
    y = search.clip(y0)
    for _ in range(num_steps):
        _, g = search.value_and_grad(y)
        y = search.clip(y + step * search.halfwidth * np.sign(g))
    search.value_and_grad(y)


def check_box_args(eps: float, max_iters: int) -> None:
    """Raise a clear error unless ``eps`` is positive and finite and ``max_iters >= 1``.

    Raises:
        ConfigError: For a bad ``eps`` or ``max_iters``.
    """
    if not (isinstance(eps, int | float) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0):
        raise ConfigError(f"eps must be a positive finite number, got {eps!r}")
    if not (isinstance(max_iters, int) and not isinstance(max_iters, bool) and max_iters >= 1):
        raise ConfigError(f"max_iters must be a positive integer, got {max_iters!r}")


# ------------------------------------------------------------------------- escalation
#: Smallest increase, relative to ``1 + |f(x)|``, that counts as an ascent: float32's
#: resolution (an increase below it is rounding, not a direction).
ASCENT_FLOOR = 1e-7


def stuck_reason(search: BoxSearch, f0: float, run: LBFGSBRun, max_iters: int) -> str | None:
    """Why the search from ``y = 0`` found no ascent (a stationary start), or None.

    * no measurable increase: ``max f - f(x) <= ASCENT_FLOOR * (1 + |f(x)|)`` (at a
      stationary point the projected gradient is 0 and L-BFGS-B cannot take a first step);
    * L-BFGS-B converged before ``max_iters`` iterations with the best point still inside
      half of the box in every coordinate (the box unexplored: it climbed to a local
      maximum of the loss next to the start, which need not be the box's maximum).
    """
    if search.best_f - f0 <= ASCENT_FLOOR * (1.0 + abs(f0)):
        return "no ascent from y = 0 (a stationary start: the gradient gives no direction)"
    assert search.best_y is not None
    reach = np.abs(search.best_y) / np.maximum(search.halfwidth, np.finfo(np.float64).tiny)
    if run.success and run.num_iters < max_iters and float(reach.max(initial=0.0)) < 0.5:
        return f"L-BFGS-B converged after {run.num_iters} iteration(s) with the box unexplored"
    return None


def restarts(
    search: BoxSearch,
    *,
    num_starts: int,
    seed: int,
    max_iters: int,
    maxcor: int = 10,
    driver: str = "setulb",
) -> list[float]:
    """L-BFGS-B from ``num_starts`` new points of the box; each start's best ``f``.

    Starts alternate between random vertices (every coordinate at ``+-halfwidth``, where a
    convex function's box maximum lies) and uniform random points of the box, drawn with
    ``numpy.random.default_rng(seed)``. The search keeps the best point over all of them.
    """
    rng = np.random.default_rng(seed)
    found = []
    for k in range(num_starts):
        search.segment_best = -math.inf
        if k % 2 == 0:
            start = search.halfwidth * rng.choice([-1.0, 1.0], size=search.dim)
        else:
            start = rng.uniform(search.lower, search.halfwidth)
        run_lbfgsb(search, start, max_iters=max_iters, maxcor=maxcor, driver=driver)
        found.append(search.segment_best)
    return found


@dataclass(frozen=True)
class Escalation:
    """How a box search was escalated past a stuck start (see :func:`escalate`).

    Attributes:
        search: ``"lbfgsb"`` (the search from ``y = 0`` alone) or ``"lbfgsb+restarts"``.
        num_starts: Searches run: 1, or 1 + the extra starts.
        start_values: The metric each search reached, the one from ``y = 0`` first (empty
            when it was not escalated).
        spread: Largest minus smallest metric over the extra starts (0 if none ran).
        disagree: Whether ``spread`` exceeds ``agree_tol`` times the best metric: the
            starts found different local maxima, so the value is a lower bound.
        reason: Why it was escalated ("" if it was not).
    """

    search: str = "lbfgsb"
    num_starts: int = 1
    start_values: tuple[float, ...] = ()
    spread: float = 0.0
    disagree: bool = False
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        """The result fields it fills (``escalation`` holds the reason)."""
        return {"search": self.search, "num_starts": self.num_starts,
                "start_values": self.start_values, "spread": self.spread,
                "disagree": self.disagree, "escalation": self.reason}


def check_escalation_args(extra_starts: int, agree_tol: float) -> None:
    """Raise a clear error unless ``extra_starts >= 0`` and ``agree_tol >= 0``.

    Raises:
        ConfigError: Otherwise.
    """
    if not (isinstance(extra_starts, int) and not isinstance(extra_starts, bool)
            and extra_starts >= 0):
        raise ConfigError(f"extra_starts must be a nonnegative integer, got {extra_starts!r}")
    if not (isinstance(agree_tol, int | float) and agree_tol >= 0):
        raise ConfigError(f"agree_tol must be a nonnegative number, got {agree_tol!r}")


def escalate(
    search: BoxSearch,
    f0: float,
    run: LBFGSBRun,
    metric: Callable[[float], float],
    *,
    enabled: bool,
    extra_starts: int,
    agree_tol: float,
    seed: int,
    max_iters: int,
    maxcor: int,
    driver: str,
) -> Escalation:
    """Search more when the start from ``y = 0`` was stuck (:func:`stuck_reason`).

    With ``enabled`` and a stuck start, runs :func:`restarts` (``extra_starts`` L-BFGS-B
    searches of ``max_iters`` iterations from random vertices and points of the box) and
    records the metric each reached. A start that ascended costs nothing more.
    """
    reason = stuck_reason(search, f0, run, max_iters) if enabled and extra_starts > 0 else None
    if reason is None:
        return Escalation()
    first = metric(search.best_f)
    found = [metric(f) for f in restarts(search, num_starts=extra_starts, seed=seed,
                                         max_iters=max_iters, maxcor=maxcor, driver=driver)]
    best = metric(search.best_f)
    spread = max(found) - min(found)
    return Escalation(
        search="lbfgsb+restarts", num_starts=1 + extra_starts,
        start_values=(first, *found), spread=spread,
        disagree=bool(spread > agree_tol * abs(best)), reason=reason,
    )
