"""Layer-wise adaptive optimizers for large batches: LARS and LAMB.

Both scale each parameter tensor's ("layer's") step by a trust ratio built from the norm
of its weights, so the step's size relative to the weights is about the same in every
layer. As is standard, 1-dimensional tensors (biases, BatchNorm scales and shifts) are
excluded by default: they get no weight decay and a trust ratio of 1, i.e. the plain
momentum-SGD (LARS) or Adam (LAMB) step. Where a norm is zero the trust ratio is 1.

The trust ratios are 0-dim tensors computed on the device (no host synchronisation).
State is plain tensors and an integer step count, so ``state_dict`` round-trips through
the run store's checkpoints and a resumed run continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def lars_trust_ratio(weight: Tensor, grad: Tensor, trust_coefficient: float, weight_decay: float) -> Tensor:
    """LARS's local learning rate ``eta ||w|| / (||g|| + beta ||w||)``.

    You, Gitman and Ginsburg 2017, "Large Batch Training of Convolutional Networks",
    eq. 6 (``eta`` the trust coefficient, ``beta`` the weight decay). 1 if ``||w||`` or
    ``||g||`` is zero.
    """
    w_norm, g_norm = torch.linalg.vector_norm(weight), torch.linalg.vector_norm(grad)
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm)
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


def lamb_trust_ratio(weight: Tensor, update: Tensor, weight_norm_max: float | None = None) -> Tensor:
    """LAMB's trust ratio ``phi(||w||) / ||r + lambda w||`` for an update ``r + lambda w``.

    You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes", Algorithm 2, with ``phi(z) = min(z, weight_norm_max)`` (the identity when
    ``weight_norm_max`` is None, as in the paper's analysis). 1 if either norm is zero.
    """
    w_norm, u_norm = torch.linalg.vector_norm(weight), torch.linalg.vector_norm(update)
    phi = w_norm if weight_norm_max is None else w_norm.clamp(max=weight_norm_max)
    ratio = phi / u_norm
    return torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))


def _adapted(p: Tensor, group: dict[str, Any]) -> bool:
    return not (group["exclude_1d"] and p.ndim <= 1)


class _Layerwise(torch.optim.Optimizer):
    """Shared ``step`` plumbing: closure, groups, gradients present."""

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one update of every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, self.state[p])
        return loss


class LARS(_Layerwise):
    """Layer-wise adaptive rate scaling with momentum (You et al. 2017, Algorithm 1).

    Per parameter tensor ``w`` with gradient ``g``, global rate ``gamma``, momentum ``m``
    and weight decay ``beta``::

        lambda = eta ||w|| / (||g|| + beta ||w||)        (trust ratio)
        v <- m v + gamma lambda (g + beta w)
        w <- w - v

    Args:
        params: Parameters or param groups.
        lr: Global learning rate ``gamma``.
        momentum: ``m``.
        weight_decay: ``beta``.
        trust_coefficient: ``eta`` (the paper: 0.001).
        exclude_1d: Give 1-d tensors no weight decay and trust ratio 1.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        exclude_1d: bool = True,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "exclude_1d": exclude_1d,
        }
        super().__init__(params, defaults)

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        adapted = _adapted(p, group)
        wd = group["weight_decay"] if adapted else 0.0
        ratio = lars_trust_ratio(p, p.grad, group["trust_coefficient"], wd) if adapted else 1.0
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        v = state["momentum_buffer"]
        v.mul_(group["momentum"]).add_(p.grad.add(p, alpha=wd) * (group["lr"] * ratio))
        p.sub_(v)


class LAMB(_Layerwise):
    """Layer-wise adaptive moments (You et al. 2020, Algorithm 2).

    Per parameter tensor ``x`` with gradient ``g`` at step ``t`` (from 1)::

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
        r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + lambda x
        x <- x - lr phi(||x||) / ||r|| r

    Args:
        params: Parameters or param groups.
        lr: Learning rate.
        betas: ``(b1, b2)``.
        eps: Added to the root of the second moment (the paper uses 1e-6).
        weight_decay: ``lambda`` (decoupled: added to the Adam direction).
        exclude_1d: Give 1-d tensors no weight decay and trust ratio 1 (Adam's step).
        weight_norm_max: Clip of ``phi`` (None: identity).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        exclude_1d: bool = True,
        weight_norm_max: float | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "exclude_1d": exclude_1d,
            "weight_norm_max": weight_norm_max,
        }
        super().__init__(params, defaults)

    def _update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] = t = int(state["step"]) + 1
        (b1, b2), g = group["betas"], p.grad
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
        if not _adapted(p, group):
            p.sub_(r, alpha=group["lr"])
            return
        r.add_(p, alpha=group["weight_decay"])
        p.sub_(r * (group["lr"] * lamb_trust_ratio(p, r, group["weight_norm_max"])))
