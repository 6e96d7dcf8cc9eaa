"""The steps-versus-samples trade-off, the critical batch size and the stability thresholds.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training", arXiv:1812.06162,
Section 2.2): training to a fixed target with batch ``B`` and a well-tuned learning rate
takes ``S`` steps and ``E = B S`` samples with ``(S / S_min - 1)(E / E_min - 1) = 1``, i.e.
``S(B) = S_min + E_min / B``: linear in ``1 / B``. The critical batch size
``B_crit = E_min / S_min`` is where both are twice their minimum; beyond it, steps stop
falling. :func:`fit_tradeoff` fits ``S_min, E_min >= 0`` by least squares on relative
residuals (``S`` spans decades across batch sizes) and :func:`bootstrap_tradeoff` gives a
percentile interval of ``B_crit`` by resampling the points.

Stability (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically Occurs at the
Edge of Stability"; 2022, "Adaptive Gradient Methods at the Edge of Stability"): on a
quadratic with curvature ``lam``, gradient descent with step ``lr`` diverges once
``lam > 2 / lr``; heavy-ball momentum ``beta`` (torch's SGD, no dampening) once
``lam > 2 (1 + beta) / lr``; Adam with frozen preconditioner ``P`` once the top eigenvalue
of ``P^{-1} H`` exceeds ``(2 + 2 beta1) / ((1 - beta1) lr)``. :func:`stability_threshold`
gives these; :func:`preconditioned_sharpness` computes ``lambda_1(P^{-1} H)`` from Adam's
second-moment state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sharpminima.errors import ConfigError
from sharpminima.landscape.eigen import lanczos
from sharpminima.landscape.objective import Objective
from sharpminima.landscape.operators import Operator


def steps_to_target(
    losses: Sequence[float | None], steps_per_epoch: int, target: float, initial_loss: float | None = None
) -> float | None:
    """Steps until the training loss first reaches ``target`` (log-linear between epochs).

    Args:
        losses: Full-pass training loss after each epoch (epoch 1 first).
        steps_per_epoch: Optimizer steps per epoch.
        target: The loss target.
        initial_loss: Loss before training (step 0), for interpolating inside epoch 1;
            None: a first-epoch hit counts one epoch of steps.

    Returns:
        The (fractional) step count, or None if no epoch reached the target.
    """
    prev_step, prev = 0.0, initial_loss
    for e, loss in enumerate(losses, start=1):
        if loss is None or not math.isfinite(loss):
            return None
        step = float(e * steps_per_epoch)
        if loss <= target:
            if prev is None or prev <= target or loss <= 0 or prev <= 0:
                return step
            frac = (math.log(prev) - math.log(target)) / (math.log(prev) - math.log(loss))
            return prev_step + frac * (step - prev_step)
        prev_step, prev = step, loss
    return None


def fit_tradeoff(batch_sizes: Sequence[float], steps: Sequence[float]) -> dict[str, Any]:
    """Fit ``S = S_min + E_min / B`` (``S_min, E_min >= 0``) on relative residuals.

    Minimises ``sum_i ((S_min + E_min / B_i - S_i) / S_i)^2`` by non-negative least squares.

    Args:
        batch_sizes: ``B_i``.
        steps: ``S_i`` (steps to the target with batch ``B_i``).

    Returns:
        ``{"s_min", "e_min", "b_crit", "n", "rel_rmse"}``; ``b_crit = E_min / S_min``
        (infinite when ``S_min = 0``: steps still fall at the largest batch).

    Raises:
        ConfigError: With fewer than two distinct batch sizes or a non-positive value.
    """
    from scipy.optimize import nnls

    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    if b.shape != s.shape or len(set(b.tolist())) < 2:
        raise ConfigError("the trade-off fit needs steps at two or more different batch sizes")
    if (b <= 0).any() or (s <= 0).any() or not np.isfinite(s).all():
        raise ConfigError("the trade-off fit needs positive batch sizes and step counts")
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1) / s[:, None]  # (n, 2), relative rows
    (s_min, e_min), _ = nnls(design, np.ones_like(s))
    pred = s_min + e_min / b
    b_crit = e_min / s_min if s_min > 0 else math.inf
    return {
        "s_min": float(s_min),
        "e_min": float(e_min),
        "b_crit": float(b_crit),
        "n": int(len(b)),
        "rel_rmse": float(np.sqrt(np.mean(((pred - s) / s) ** 2))),
    }


def bootstrap_tradeoff(
    batch_sizes: Sequence[float],
    steps: Sequence[float],
    *,
    num_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`fit_tradeoff` with a percentile bootstrap interval of ``B_crit`` over the points.

    Resamples with fewer than two distinct batch sizes are redrawn (not counted). With few
    points the interval is coarse (few distinct resamples): say so where it is shown.

    Returns:
        The fit plus ``"ci"`` (``[low, high]`` of ``B_crit``, may hold ``inf``), ``"level"``
        and ``"num_bootstrap"``.
    """
    fit = fit_tradeoff(batch_sizes, steps)
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    tries = 0
    while len(values) < num_bootstrap and tries < 20 * num_bootstrap:
        tries += 1
        idx = rng.integers(0, len(b), len(b))
        if len(set(b[idx].tolist())) < 2:
            continue
        values.append(fit_tradeoff(b[idx], s[idx])["b_crit"])
    if values:
        ordered = sorted(values)  # may hold inf (S_min = 0): order statistics, no interpolation
        last = len(ordered) - 1
        lo = ordered[max(0, math.floor((0.5 - level / 2) * last))]
        hi = ordered[min(last, math.ceil((0.5 + level / 2) * last))]
        fit["ci"] = [float(lo), float(hi)]
    else:
        fit["ci"] = None
    fit.update(level=level, num_bootstrap=len(values))
    return fit


def tradeoff_curve(s_min: float, e_min: float, batch_sizes: Sequence[float]) -> list[float]:
    """``S(B) = S_min + E_min / B`` at each batch size."""
    return [s_min + e_min / float(bs) for bs in batch_sizes]


def stability_threshold(optimizer: str, lr: float, *, momentum: float = 0.0, beta1: float = 0.9) -> float:
    """The largest (preconditioned) curvature at which a quadratic does not diverge.

    * ``sgd``: ``2 (1 + momentum) / lr`` (heavy ball as torch implements it, no dampening;
      ``2 / lr`` without momentum);
    * ``adam``/``adamw``: ``(2 + 2 beta1) / ((1 - beta1) lr)``, for the top eigenvalue of
      the preconditioned Hessian ``P^{-1} H`` (Cohen et al. 2022).

    Raises:
        ConfigError: For another optimizer or a non-positive learning rate.
    """
    if not lr > 0:
        raise ConfigError(f"the stability threshold needs a positive learning rate, got {lr}")
    if optimizer == "sgd":
        return 2.0 * (1.0 + momentum) / lr
    if optimizer in ("adam", "adamw"):
        return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)
    raise ConfigError(f"no stability threshold for optimizer {optimizer!r}; use sgd or adam")


class _Preconditioned(Operator):
    """``D H D`` with ``D = P^{-1/2}`` diagonal: the same spectrum as ``P^{-1} H``."""

    kind = "preconditioned_hessian"

    def __init__(self, objective: Objective, x: Tensor, d: Tensor) -> None:
        super().__init__()
        self.objective = objective
        self.shape = (objective.dim, objective.dim)
        self.dtype, self.device = x.dtype, x.device
        self.d = d.to(dtype=x.dtype, device=x.device)
        self._hvp = objective.hvp_at(x)

    def _matvec(self, v: Tensor) -> Tensor:
        return self.d * self._hvp(self.d * v)


def adam_preconditioner(exp_avg_sq: Tensor, step: int, *, beta2: float = 0.999, eps: float = 1e-8) -> Tensor:
    """Adam's diagonal ``P = sqrt(v / (1 - beta2^t)) + eps`` from its second-moment state."""
    return torch.sqrt(exp_avg_sq / (1.0 - beta2 ** max(1, step))) + eps


def preconditioned_sharpness(
    objective: Objective, x: Tensor, precond: Tensor, *, tol: float = 1e-2, max_iters: int = 20, seed: int = 0
) -> dict[str, Any]:
    """``lambda_1(P^{-1} H)`` at ``x`` by Lanczos on ``P^{-1/2} H P^{-1/2}``.

    Args:
        objective: The loss (its Hessian-vector products).
        x: The point.
        precond: The diagonal ``P`` (positive), shape ``(n,)``.
        tol: Lanczos relative residual tolerance.
        max_iters: Lanczos steps at most.
        seed: Start vector seed.

    Returns:
        ``{"value", "converged", "num_hvp"}``.
    """
    op = _Preconditioned(objective, x, precond.rsqrt())
    res = lanczos(op, 1, tol=tol, max_iters=max_iters, seed=seed)
    return {"value": float(res.value), "converged": bool(res.converged), "num_hvp": int(op.num_matvecs)}
