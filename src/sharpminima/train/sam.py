"""Sharpness-aware minimization (SAM) and its adaptive variant (ASAM) as step methods.

Both wrap whatever optimizer the config names (Adam by default): they only change the
gradient that optimizer receives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig
from sharpminima.losses import Loss
from sharpminima.train.step_parts import (
    GHOST,
    NONNEGATIVE,
    POSITIVE,
    StepFn,
    batch_loss,
    buffers_restored,
    method_options,
    training_loss,
)

#: Keeps ``g / ||g||`` finite at a zero gradient (the SAM and ASAM authors' codes add
#: 1e-12 and 1e-16).
NORM_FLOOR = 1e-12

#: Options of ``sam`` (Foret et al. 2021: rho = 0.05 for their CIFAR runs).
SAM_ARGS: dict[str, object] = {"rho": 0.05, "ghost_batch_size": None}
#: Options of ``asam`` (Kwon et al. 2021 and their code: rho = 0.5, eta = 0.01).
ASAM_ARGS: dict[str, object] = {"rho": 0.5, "eta": 0.01, "ghost_batch_size": None}

#: ``perturbation(named_params) -> e``, one tensor per parameter, from the gradients at w.
Perturbation = Callable[[list[tuple[str, nn.Parameter]]], list[Tensor]]


def sam_perturbation(rho: float) -> Perturbation:
    """SAM's ascent step ``e = rho * g / ||g||_2``, the norm over all parameters together.

    This is the first-order solution of ``max_{||e|| <= rho} L_B(w + e)`` (Foret et al.
    2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization", eq. 2).
    """

    def perturb(named: list[tuple[str, nn.Parameter]]) -> list[Tensor]:
        grads = [p.grad for _, p in named]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return [g * (rho / (norm + NORM_FLOOR)) for g in grads]

    return perturb


def asam_perturbation(rho: float, eta: float) -> Perturbation:
    """ASAM's ascent step ``e = rho * T_w^2 g / ||T_w g||_2`` with ``T_w = |w| + eta``.

    ``T_w`` acts elementwise and makes the neighbourhood scale with the weights, so the
    sharpness it probes is invariant to rescaling a layer (Kwon et al. 2021, "ASAM:
    Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
    Networks", eq. 11). As in the authors' code, only parameters whose name contains
    ``weight`` are scaled; the others (biases) use ``T = 1``.
    """

    def perturb(named: list[tuple[str, nn.Parameter]]) -> list[Tensor]:
        scales = [p.detach().abs() + eta if "weight" in name else None for name, p in named]
        scaled = [p.grad if t is None else t * p.grad for t, (_, p) in zip(scales, named, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in scaled]))
        return [
            (g if t is None else t * g) * (rho / (norm + NORM_FLOOR))
            for t, g in zip(scales, scaled, strict=True)
        ]

    return perturb


def sharpness_aware_step(
    perturbation: Perturbation, ghost_batch_size: int | None, criterion: Loss | None = None
) -> StepFn:
    """The two-pass step shared by SAM and ASAM.

    1. ``g = grad L_B(w)`` (this pass updates BatchNorm running statistics);
    2. ``e = perturbation(g)``; ``g_sam = grad L_B(w + e)`` (running statistics are left
       as the first pass set them, see :func:`buffers_restored`; dropout draws new masks);
    3. ``w`` is restored exactly (copied back, not ``w + e - e``) and the optimizer steps
       with ``g_sam``.

    Returns the batch loss at ``w``.
    """

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, xb, yb, ghost_batch_size, criterion)
        loss.backward()
        named = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        with torch.no_grad():
            at_w = [p.detach().clone() for _, p in named]
            for (_, p), e in zip(named, perturbation(named), strict=True):
                p.add_(e)
        opt.zero_grad(set_to_none=True)
        with buffers_restored(model):
            batch_loss(model, xb, yb, ghost_batch_size, criterion).backward()
        with torch.no_grad():
            for (_, p), w in zip(named, at_w, strict=True):
                p.copy_(w)
        opt.step()
        return loss.detach()

    return step


def sam(config: TrainConfig) -> StepFn:
    """SAM: the config's optimizer steps with the gradient at ``w + rho g/||g||``.

    Options (``config.method_args``): ``rho`` (0.05), the neighbourhood radius;
    ``ghost_batch_size`` (None) for ghost BatchNorm in both passes.

    Raises:
        ConfigError: For an unknown option or an invalid value.
    """
    args = method_options(config, "sam", SAM_ARGS, {"rho": POSITIVE, "ghost_batch_size": GHOST})
    return sharpness_aware_step(
        sam_perturbation(args["rho"]), args["ghost_batch_size"], training_loss(config)
    )


def asam(config: TrainConfig) -> StepFn:
    """Adaptive SAM: as :func:`sam` with the scale-invariant ``T_w^2 g / ||T_w g||`` ascent.

    Options (``config.method_args``): ``rho`` (0.5), ``eta`` (0.01), ``ghost_batch_size``
    (None).

    Raises:
        ConfigError: For an unknown option or an invalid value.
    """
    args = method_options(
        config, "asam", ASAM_ARGS, {"rho": POSITIVE, "eta": NONNEGATIVE, "ghost_batch_size": GHOST}
    )
    return sharpness_aware_step(asam_perturbation(args["rho"], args["eta"]), args["ghost_batch_size"],
                                training_loss(config))
