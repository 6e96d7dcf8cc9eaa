"""How Keskar sharpness depends on eps, beside its first- and second-order bounds.

Keskar et al.'s reviewers ask that the metric's dependence on ``eps`` be justified. With
``w_i = s_i eps``, ``s_i = |(A^+ x)_i| + 1`` the box half-widths, ``g = A^T grad f(x)``
and ``H = A^T grad^2 f(x) A``, Taylor's theorem gives, for the box maximum,

    max_{|y_i| <= w_i} f(x + A y) - f(x)  <=  sum_i |g_i| w_i  +  (1/2) lambda_max(H)^+ ||w||^2
                                              + O(eps^3),

exactly (no remainder) when ``f`` is quadratic. In units of the metric
(``100 (.) / (1 + f(x))``):

* linear term ``100 eps sum_i |g_i| s_i / (1 + f(x))``: attained exactly, for a linear
  ``f``, at the corner ``y = w sign(g)``; it dominates for small eps wherever ``g != 0``;
* quadratic term ``50 eps^2 lambda_max ||s||^2 / (1 + f(x))``: at a zero-gradient point the
  metric grows like ``eps^2`` and is bounded by this; it is attained when the top
  eigenvector of ``H`` is proportional to a corner ``w * sign``, e.g. ``H = lambda I``.

So for small eps and ``A = I`` the metric tracks ``lambda_max`` weighted by
``||(|x| + 1)||^2``, and a non-zero gradient adds a term linear in eps: comparing values at
different eps, or at points with different gradients, mixes the two regimes.
:func:`epsilon_study` measures the metric over a range of eps beside both terms and the
log-log slope (about 2 in the curvature regime, 1 in the gradient regime).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sharpminima.deprecation import renamed
from sharpminima.errors import ConfigError
from sharpminima.landscape.box_search import Driver
from sharpminima.landscape.objective import (
    FunctionObjective,
    LossFn,
    Objective,
    as_objective,
    objective_settings,
)
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, positive, register_measure
from sharpminima.landscape.results import Cost, CostMeter, Result
from sharpminima.landscape.sharpness import (
    SharpnessResult,
    SubspaceDistribution,
    keskar_halfwidth,
    keskar_sharpness,
    resolve_subspace,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class EpsilonStudyResult(Result):
    """Keskar sharpness over a range of eps, with its two bounding terms.

    Attributes:
        value: Log-log slope of sharpness against eps (least squares over positive values;
            ~2 in the curvature regime, ~1 in the gradient regime; NaN if fewer than two).
        eps_values: The eps values, ascending.
        sharpness: The metric at each eps.
        linear_term: ``100 eps sum_i |g_i| s_i / (1 + f0)`` at each eps.
        quadratic_term: ``50 eps^2 max(lambda_max, 0) ||s||^2 / (1 + f0)`` at each eps.
        bound: ``linear_term + quadratic_term`` (a bound to second order; exact bound for a
            quadratic ``f``).
        f0: ``f(x)``.
        lambda_max: Largest eigenvalue of the Hessian in box coordinates (``A^T H A``).
        grad_weighted_l1: ``sum_i |g_i| s_i``.
        scale_sq_norm: ``||s||^2``.
        results: The :class:`SharpnessResult` of each eps (not in ``to_dict``).
    """

    eps_values: tuple[float, ...] = ()
    sharpness: tuple[float, ...] = ()
    linear_term: tuple[float, ...] = ()
    quadratic_term: tuple[float, ...] = ()
    bound: tuple[float, ...] = ()
    f0: float = math.nan
    lambda_max: float = math.nan
    grad_weighted_l1: float = math.nan
    scale_sq_norm: float = math.nan
    results: tuple[SharpnessResult, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict; per-eps results are reduced to their values."""
        d = Result.to_dict(dataclasses.replace(self, results=()))
        d.pop("results", None)
        return d


def _loglog_slope(eps: np.ndarray, values: np.ndarray) -> float:
    keep = values > 0
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(eps[keep]), np.log(values[keep]), 1)[0])


@renamed(maxiter="max_iters")
def epsilon_study(
    loss: LossFn | Objective,
    x: Tensor,
    eps_values: Sequence[float] | Tensor,
    *,
    A: Tensor | None = None,
    p: int | None = None,
    seed: int | None = None,
    distribution: SubspaceDistribution = "uniform",
    max_iters: int = 10,
    lambda_max: float | None = None,
    eigen_tol: float = 1e-4,
    driver: Driver = "auto",
) -> EpsilonStudyResult:
    """Keskar sharpness for each eps, beside its linear and quadratic bounding terms.

    One gradient at ``x`` gives ``f0`` and ``g``; ``lambda_max`` is that of the Hessian of
    ``y -> f(x + A y)`` at 0 (of ``f`` itself for ``A = I``), computed with
    ``sharpminima.landscape.eigen.hessian_eigenvalues`` (Lanczos on Hessian-vector
    products) unless given. The same subspace ``A`` (given or drawn once) is used for every
    eps.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point ``(n,)``.
        eps_values: The box sizes (positive).
        A: Subspace matrix ``(n, p)``, or ``None`` for the full space.
        p: Draw ``A`` (``p`` columns, needs ``seed``) instead.
        seed: Seed of the drawn subspace.
        distribution: Distribution of the drawn subspace.
        max_iters: L-BFGS-B iterations per eps.
        lambda_max: The top Hessian eigenvalue in box coordinates, if known.
        eigen_tol: Relative residual tolerance of the eigenvalue computation.
        driver: L-BFGS-B driver (see ``keskar_sharpness``).

    Returns:
        :class:`EpsilonStudyResult`.

    Raises:
        ConfigError: For empty or nonpositive eps values, if ``lambda_max`` is needed but the
            eigenvalue module is unavailable, or as :func:`keskar_sharpness` does.
    """
    eps_arr = np.sort(np.asarray(torch.as_tensor(eps_values, dtype=torch.float64).reshape(-1)))
    if eps_arr.size == 0 or not (np.all(np.isfinite(eps_arr)) and np.all(eps_arr > 0)):
        raise ConfigError(f"eps_values must be positive finite numbers, got {list(eps_arr)}")
    obj = as_objective(loss, x)
    x = x.detach().to(device=obj.device, dtype=obj.dtype)
    a, sub = resolve_subspace(obj, A, p, seed, distribution)
    extra_hvp = extra_grad = 0
    with CostMeter(obj) as meter:
        f0_t, grad = obj.loss_and_grad(x)
        f0 = float(f0_t)
        g = (grad if a is None else a.T @ grad).double().cpu().numpy()
        s = keskar_halfwidth(x, 1.0, a)  # |(A^+ x)_i| + 1
        if lambda_max is None:
            try:
                from sharpminima.landscape.eigen import hessian_eigenvalues
            except ImportError as err:
                raise ConfigError(
                    "computing lambda_max needs sharpminima.landscape.eigen; pass lambda_max="
                ) from err
            if a is None:
                lam = float(hessian_eigenvalues(obj, x, k=1, tol=eigen_tol).value)
            else:
                a_fixed = a

                def along(y: Tensor) -> Tensor:
                    return obj(x + a_fixed @ y)

                y0 = torch.zeros(a.shape[1], dtype=obj.dtype, device=obj.device)
                wrapper = FunctionObjective(along, y0)
                lam = float(hessian_eigenvalues(wrapper, y0, k=1, tol=eigen_tol).value)
                extra_hvp = wrapper.counters.num_hvp
                extra_grad = wrapper.counters.num_grad  # building the kept gradient graph
            lam_source = "lanczos"
        else:
            lam, lam_source = float(lambda_max), "given"
        results = tuple(
            keskar_sharpness(obj, x, eps=float(e), A=a, max_iters=max_iters, driver=driver)
            for e in eps_arr
        )
    gl1 = float(np.abs(g) @ s)
    s2 = float(s @ s)
    lin = 100.0 * eps_arr * gl1 / (1.0 + f0)
    quad = 50.0 * eps_arr**2 * max(lam, 0.0) * s2 / (1.0 + f0)
    sharp = np.array([r.value for r in results])
    cost = meter.cost
    return EpsilonStudyResult(
        value=_loglog_slope(eps_arr, sharp),
        settings={"measure": "epsilon_study", **sub, "max_iters": max_iters,
                  "lambda_source": lam_source, "eigen_tol": eigen_tol,
                  "dtype": str(obj.dtype), **objective_settings(obj)},
        cost=Cost(cost.num_loss, cost.num_grad + extra_grad, cost.num_hvp + extra_hvp, cost.seconds),
        seed=seed,
        eps_values=tuple(float(e) for e in eps_arr),
        sharpness=tuple(float(v) for v in sharp),
        linear_term=tuple(float(v) for v in lin),
        quadratic_term=tuple(float(v) for v in quad),
        bound=tuple(float(v) for v in lin + quad),
        f0=f0,
        lambda_max=lam,
        grad_weighted_l1=gl1,
        scale_sq_norm=s2,
        results=results,
    )


def plot_epsilon_study(result: EpsilonStudyResult) -> Figure:
    """Log-log plot of sharpness against eps with the linear, quadratic and total bounds.

    Drawn in the one style of :mod:`sharpminima.figstyle` (one column of a two-column paper);
    a bare :class:`matplotlib.figure.Figure`, no pyplot state, any backend. Write it with
    :func:`sharpminima.figstyle.save_figure` or :func:`~sharpminima.figstyle.save_figure_as`.

    Args:
        result: An :class:`EpsilonStudyResult`.

    Returns:
        The figure (one axes).
    """
    from sharpminima.figstyle import SINGLE_COLUMN, new_figure, styled  # matplotlib only when drawn

    eps = np.asarray(result.eps_values)

    def positive(v: Sequence[float]) -> np.ndarray:
        arr = np.asarray(v, dtype=float)
        return np.where(arr > 0, arr, np.nan)

    @styled
    def draw() -> Figure:
        fig, ax = new_figure(SINGLE_COLUMN, 3.9)
        ax.loglog(eps, positive(result.sharpness), "o-", label="sharpness (L-BFGS-B)")
        ax.loglog(eps, positive(result.linear_term), "--",
                  label=r"linear: $100\,\epsilon\,\sum|g_i|s_i/(1+f)$")
        ax.loglog(eps, positive(result.quadratic_term), ":",
                  label=r"quadratic: $50\,\epsilon^2\lambda_{max}\|s\|^2/(1+f)$")
        ax.loglog(eps, positive(result.bound), "-", lw=0.8, color="grey", label="sum (2nd-order bound)")
        ax.set_xlabel(r"box half-width $\epsilon$ (relative to $|x_i| + 1$)")
        ax.set_ylabel("Keskar sharpness (%)")
        ax.set_title("Keskar sharpness against the box size\n"
                     f"log-log slope {result.value:.2f}, "
                     + r"$\lambda_{max}$" + f" = {result.lambda_max:.3g}")
        fig.legend(loc="outside lower center")  # four long labels: below, not over the lines
        return fig

    return draw()


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class EpsilonParams(MeasureParams):
    """Parameters of ``epsilon_study``: the eps grid and L-BFGS-B iterations per eps."""

    eps: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
    max_iters: int = 10

    def validate(self) -> None:
        """Positive eps values, max_iters >= 1."""
        if not self.eps or any(not e > 0 for e in self.eps):
            raise ConfigError(f"eps must be positive numbers, got {list(self.eps)}")
        positive("max_iters", self.max_iters, integer=True)

    def canonical(self) -> dict[str, Any]:
        """The grid sorted and without repeats."""
        return {"eps": sorted(set(self.eps)), "max_iters": self.max_iters}


def _epsilon(inputs: Inputs, p: EpsilonParams) -> EpsilonStudyResult:
    return epsilon_study(inputs.objective, inputs.x, sorted(set(p.eps)), max_iters=p.max_iters)


register_measure(Measure(
    "epsilon_study", EpsilonParams, _epsilon,
    "Keskar sharpness over an eps grid beside its linear and quadratic bounds (log-log slope)",
    aliases=("epsilon-study",), passes=lambda p: len(p.eps) * (p.max_iters + 3) + 40,
))
