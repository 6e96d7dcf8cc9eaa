"""Flatness measures beside Keskar sharpness: average-case and adaptive worst-case.

* :func:`average_sharpness`: the expected loss increase under random Gaussian perturbations
  (Monte-Carlo, with a standard error).
* :func:`adaptive_sharpness`: the worst-case increase over a box scaled by ``|x|``
  (scale-invariant under the reparametrisations of Dinh et al. 2017; Kwon et al. 2021,
  Andriushchenko et al. 2023), maximised with the same L-BFGS-B machinery as Keskar's
  (:mod:`sharpminima.landscape.box_search`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from sharpminima.deprecation import renamed
from sharpminima.errors import ConfigError
from sharpminima.landscape.batched import evaluate_points
from sharpminima.landscape.box_search import (
    BoxSearch,
    Driver,
    check_box_args,
    check_escalation_args,
    escalate,
    resolve_driver,
    run_lbfgsb,
)
from sharpminima.landscape.objective import LossFn, Objective, as_objective, objective_settings
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, positive, register_measure
from sharpminima.landscape.results import CostMeter, Result
from sharpminima.landscape.sharpness import SharpnessResult

PerturbationScale = Literal["keskar", "adaptive", "absolute"]
SCALES = ("keskar", "adaptive", "absolute")


# ---------------------------------------------------------------------------------------
# Average-case sharpness
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AverageSharpnessResult(Result):
    """Monte-Carlo estimate of ``E[f(x + z)] - f(x)``.

    Attributes:
        value: The estimated mean loss increase.
        stderr: Its standard error (standard deviation of the independent terms over the
            square root of their number).
        f0: ``f(x)``.
        relative: ``100 * value / (1 + f0)`` (Keskar's normalisation).
        num_draws: Random directions drawn (each costs two evaluations if antithetic).
        terms: The independent terms averaged (one per direction).
    """

    stderr: float = math.nan
    f0: float = math.nan
    relative: float = math.nan
    num_draws: int = 0
    terms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def num_samples(self) -> int:
        """Deprecated name of :attr:`num_draws`."""
        return self.num_draws


def _scale(x: Tensor, scale: str, eta: float) -> Tensor:
    if scale == "keskar":
        return x.abs() + 1.0
    if scale == "adaptive":
        return x.abs() + eta
    return torch.ones_like(x)


@renamed(num_samples="num_draws")
def average_sharpness(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    sigma: float = 1e-3,
    scale: PerturbationScale = "keskar",
    eta: float = 0.0,
    num_draws: int = 32,
    antithetic: bool = True,
    seed: int = 0,
    batched: bool | None = None,
) -> AverageSharpnessResult:
    """Average-case sharpness: the expected loss increase under Gaussian noise.

    ``z = sigma * s * xi`` with ``xi ~ N(0, I_n)`` and the per-parameter scale ``s``:
    ``"keskar"``: ``s_i = |x_i| + 1`` (the shape of Keskar's box); ``"adaptive"``:
    ``s_i = |x_i| + eta`` (scale-invariant for ``eta = 0``); ``"absolute"``: ``s_i = 1``.
    The estimate of ``E[f(x + z)] - f(x)`` averages ``f(x + z_k) - f(x)``, or with
    ``antithetic`` (default) ``(f(x + z_k) + f(x - z_k)) / 2 - f(x)``, which cancels the
    odd terms of the Taylor expansion (the gradient term) exactly and so reduces the
    variance without changing the mean. For ``f`` quadratic with Hessian ``H`` the mean is
    ``sigma^2 tr(H S^2) / 2``, ``S = diag(s)``.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point ``(n,)``.
        sigma: Relative noise level (``> 0``).
        scale: ``"keskar"``, ``"adaptive"`` or ``"absolute"``.
        eta: Offset of the adaptive scale (``>= 0``).
        num_draws: Random directions (``>= 2``).
        antithetic: Evaluate ``x - z`` as well as ``x + z``.
        seed: Seed of the directions (``torch.Generator`` on the CPU).
        batched: Evaluate several perturbed points per forward pass
            (:func:`~sharpminima.landscape.batched.evaluate_points`; None: the faster path
            for the device).

    Returns:
        :class:`AverageSharpnessResult`.

    Raises:
        ConfigError: For a nonpositive sigma, unknown scale, negative eta or fewer than two
            samples.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be a positive finite number, got {sigma!r}")
    if scale not in SCALES:
        raise ConfigError(f"unknown perturbation scale {scale!r}; choose one of {SCALES}")
    if not eta >= 0:
        raise ConfigError(f"eta must be nonnegative, got {eta!r}")
    if not (isinstance(num_draws, int) and num_draws >= 2):
        raise ConfigError(f"num_draws must be an integer >= 2, got {num_draws!r}")
    obj = as_objective(loss, x)
    x = x.detach().to(device=obj.device, dtype=obj.dtype)
    gen = torch.Generator().manual_seed(int(seed))
    with CostMeter(obj) as meter:
        s = sigma * _scale(x, scale, eta)  # (n,)

        def points() -> Iterator[Tensor]:  # x, then the directions in the same order as ever
            yield x
            for _ in range(num_draws):
                z = s * torch.randn(x.shape[0], generator=gen, dtype=x.dtype).to(x.device)
                yield x + z
                if antithetic:
                    yield x - z

        # f0 comes from the same evaluation path as the perturbed values: the increases are
        # ~1e-6 of the loss, so mixing float32- and float64-accumulated values would bias them
        f0, *values = evaluate_points(obj, points(), batched=batched)[0]
        if antithetic:
            terms = [(up + down) / 2 - f0 for up, down in zip(values[::2], values[1::2], strict=True)]
        else:
            terms = [up - f0 for up in values]
    t = np.asarray(terms)
    mean = float(t.mean())
    return AverageSharpnessResult(
        value=mean,
        settings={"metric": "average", "sigma": sigma, "scale": scale,
                  "eta": eta if scale == "adaptive" else None, "antithetic": antithetic,
                  "num_draws": num_draws, "dtype": str(obj.dtype),
                  **objective_settings(obj)},
        cost=meter.cost,
        seed=seed,
        stderr=float(t.std(ddof=1) / math.sqrt(t.size)),
        f0=f0,
        relative=100.0 * mean / (1.0 + f0),
        num_draws=num_draws,
        terms=tuple(float(v) for v in t),
    )


# ---------------------------------------------------------------------------------------
# Adaptive (worst-case) sharpness
# ---------------------------------------------------------------------------------------


@renamed(maxiter="max_iters")
def adaptive_sharpness(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    eps: float = 1e-3,
    eta: float = 0.0,
    max_iters: int = 10,
    maxcor: int = 10,
    ftol: float = 0.0,
    gtol: float = 0.0,
    driver: Driver = "auto",
    escalate_stuck: bool = True,
    extra_starts: int = 8,
    agree_tol: float = 0.05,
) -> SharpnessResult:
    """Adaptive worst-case sharpness: ``max_{|z_i| <= eps (|x_i| + eta)} f(x + z) - f(x)``.

    The elementwise l-infinity version of the adaptive sharpness of Kwon et al. (ASAM,
    2021, who use ``eta = 0.01`` and an l2 ball) and Andriushchenko et al. (2023, ``eta =
    0``). With ``eta = 0`` it is invariant under rescalings of the weights that leave the
    function unchanged (Dinh et al. 2017), which Keskar's ``+1`` is not; parameters that are
    exactly zero are then not perturbed. The maximum is computed as in
    :func:`~sharpminima.landscape.sharpness.keskar_sharpness` (``max_iters`` L-BFGS-B
    iterations from ``z = 0``; the best point evaluated; never below ``f(x)``; a stuck start
    escalated to ``extra_starts`` more starts, recorded in the result).

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point ``(n,)``.
        eps: Relative box size.
        eta: Offset added to ``|x_i|`` (``>= 0``).
        max_iters: L-BFGS-B iterations.
        maxcor: L-BFGS-B memory.
        ftol: L-BFGS-B relative-reduction tolerance (0: off).
        gtol: L-BFGS-B projected-gradient tolerance (0: off).
        driver: L-BFGS-B driver (see ``keskar_sharpness``).
        escalate_stuck: Search from more starts when the start from ``z = 0`` is stuck.
        extra_starts: Starts added by an escalation (seeded with 0).
        agree_tol: Relative spread of the extra starts above which they disagree.

    Returns:
        :class:`~sharpminima.landscape.sharpness.SharpnessResult` with
        ``value = fmax - f0`` (unnormalised; ``relative_increase`` gives Keskar's scaling).

    Raises:
        ConfigError: For nonpositive eps or max_iters, negative eta, an unknown driver or a
            loss that is not finite in the box.
    """
    check_box_args(eps, max_iters)
    check_escalation_args(extra_starts, agree_tol)
    if not eta >= 0:
        raise ConfigError(f"eta must be nonnegative, got {eta!r}")
    drv = resolve_driver(driver)
    obj = as_objective(loss, x)
    x = x.detach().to(device=obj.device, dtype=obj.dtype)
    with CostMeter(obj) as meter:
        halfwidth = (eps * (x.detach().double().abs() + eta)).cpu().numpy()
        search = BoxSearch(obj, x, None, halfwidth)
        y0 = np.zeros(search.dim)
        f0, _ = search.value_and_grad(y0)
        run = run_lbfgsb(search, y0, max_iters=max_iters, maxcor=maxcor, ftol=ftol, gtol=gtol,
                         driver=drv)
        esc = escalate(search, f0, run, lambda f: f - f0, enabled=escalate_stuck,
                       extra_starts=extra_starts, agree_tol=agree_tol, seed=0,
                       max_iters=max_iters, maxcor=maxcor, driver=drv)
    fields = search.result_fields(f0)
    return SharpnessResult(
        value=fields["fmax"] - f0,
        settings={"metric": "adaptive", "eps": float(eps), "eta": float(eta), "space": "full",
                  "p": obj.dim, "max_iters": max_iters, "maxcor": maxcor, "ftol": ftol,
                  "gtol": gtol, "optimizer": "L-BFGS-B", "driver": drv,
                  "escalate": bool(escalate_stuck), "extra_starts": extra_starts,
                  "agree_tol": float(agree_tol), "dtype": str(obj.dtype),
                  **objective_settings(obj)},
        cost=meter.cost,
        converged=run.success,
        final_f=run.final_f,
        num_iters=run.num_iters,
        message=run.message,
        **fields,
        **esc.fields(),
    )


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class AverageParams(MeasureParams):
    """Parameters of ``average_sharpness`` (see :func:`average_sharpness`)."""

    sigma: float = 1e-3
    scale: Literal["keskar", "adaptive", "absolute"] = "keskar"
    eta: float = 0.0
    num_draws: int = 32
    antithetic: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Sigma > 0, eta >= 0, at least two draws."""
        positive("sigma", self.sigma)
        if self.eta < 0 or self.num_draws < 2:
            raise ConfigError(f"need eta >= 0 and num_draws >= 2, got {self.eta}, {self.num_draws}")


@dataclass(frozen=True)
class AdaptiveParams(MeasureParams):
    """Parameters of ``adaptive_sharpness`` (see :func:`adaptive_sharpness`)."""

    eps: float = 1e-3
    eta: float = 0.0
    max_iters: int = 10
    escalate: bool = True
    extra_starts: int = 8
    agree_tol: float = 0.05

    def validate(self) -> None:
        """Eps > 0, eta >= 0, max_iters >= 1, extra_starts >= 0, agree_tol >= 0."""
        check_box_args(self.eps, self.max_iters)
        check_escalation_args(self.extra_starts, self.agree_tol)
        if self.eta < 0:
            raise ConfigError(f"eta must be nonnegative, got {self.eta}")


def _average(inputs: Inputs, p: AverageParams) -> AverageSharpnessResult:
    return average_sharpness(inputs.objective, inputs.x, sigma=p.sigma, scale=p.scale, eta=p.eta,
                             num_draws=p.num_draws, antithetic=p.antithetic, seed=p.seed)


def _adaptive(inputs: Inputs, p: AdaptiveParams) -> SharpnessResult:
    return adaptive_sharpness(inputs.objective, inputs.x, eps=p.eps, eta=p.eta,
                              max_iters=p.max_iters, escalate_stuck=p.escalate,
                              extra_starts=p.extra_starts, agree_tol=p.agree_tol)


register_measure(Measure(
    "average_sharpness", AverageParams, _average,
    "Expected loss increase under Gaussian weight noise of relative size sigma (with a standard error)",
    passes=lambda p: p.num_draws * (2 if p.antithetic else 1) / 3,
))
register_measure(Measure(
    "adaptive_sharpness", AdaptiveParams, _adaptive,
    "Worst-case loss increase in a box scaled by |x| (scale-invariant; ASAM-style)",
    passes=lambda p: p.max_iters + 3,
))
