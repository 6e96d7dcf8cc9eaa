"""Step methods for the paper's remedies (Appendix E) and ghost BatchNorm.

Keskar et al. 2017, Appendix E, try data augmentation, conservative training, adversarial
training and noise on gradients or iterates against the large-batch gap (augmentation
lives with the data). Ghost BatchNorm (Hoffer et al. 2017) is the reviewers' addition.
Every method here returns the batch's mean loss at the step's starting weights, so the
loop's epoch loss means the same thing for all methods.

Randomness (noise, dropout) comes from torch's global generator, which the loop reseeds
at every epoch start; counters that must survive a resume live in the optimizer's first
param group, which the optimizer's ``state_dict`` saves.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.config import SB_BATCH_SIZE, TrainConfig
from sharpminima.train.step_parts import (
    FRACTION,
    GHOST,
    NONNEGATIVE,
    POSITIVE_INT,
    StepFn,
    batch_loss,
    buffers_restored,
    is_real,
    method_options,
    trainable,
    training_loss,
)

#: Pixel ranges of the datasets whose range is known (images scaled ``byte/256`` or
#: ``byte/255``); adversarial inputs are clipped to it under ``clip="auto"``.
DATA_RANGES: dict[str, tuple[float, float]] = {
    "mnist": (0.0, 1.0),
    "cifar10": (0.0, 1.0),
    "cifar100": (0.0, 1.0),
}

#: Options of ``conservative`` (the paper: 3 Adam iterations, lambda = 1e-3).
CONSERVATIVE_ARGS: dict[str, object] = {"lam": 1e-3, "inner_iters": 3, "ghost_batch_size": None}
#: Options of ``adversarial`` (Goodfellow et al. 2015: alpha = 0.5; eps in input units).
ADVERSARIAL_ARGS: dict[str, object] = {"eps": 0.1, "alpha": 0.5, "clip": "auto", "ghost_batch_size": None}
#: Options of ``grad_noise`` (Neelakantan et al. 2015: eta in {0.01, 0.3, 1}, gamma 0.55).
GRAD_NOISE_ARGS: dict[str, object] = {"eta": 0.01, "gamma": 0.55, "ghost_batch_size": None}
#: Options of ``iterate_noise`` (no published setting; std 1e-4 per step, constant).
ITERATE_NOISE_ARGS: dict[str, object] = {"std": 1e-4, "gamma": 0.0, "ghost_batch_size": None}
#: Options of ``ghost_bn`` (virtual batches of the paper's SB size, 256).
GHOST_BN_ARGS: dict[str, object] = {"ghost_batch_size": SB_BATCH_SIZE}

#: Key of the step counter of the noise schedules in ``optimizer.param_groups[0]``.
NOISE_STEP_KEY = "noise_step"


def conservative(config: TrainConfig) -> StepFn:
    """Conservative training: each step approximately solves a proximal problem.

    ``x_{k+1} ~ argmin_x (1/B) sum_{i in B_k} f_i(x) + (lam/2) ||x - x_k||^2`` by
    ``inner_iters`` iterations of the config's optimizer, each on the gradient
    ``grad f_B(x) + lam (x - x_k)`` with ``x_k`` the weights at the step's start (Keskar
    et al. 2017, Appendix E: 3 Adam iterations, lambda = 1e-3).

    The inner iterations are the update: there is no separate outer optimizer, and
    ``x_{k+1}`` is wherever the last inner iteration leaves the weights. The paper does
    not say whether the inner Adam restarts at every step; we keep one optimizer whose
    state (moments, step count: it advances ``inner_iters`` per batch) carries over from
    batch to batch, the natural reading of "3 Adam iterations" in a Keras training loop.
    A restart would make every first inner step a sign-like step of size ``lr`` and
    discard the run's second-moment estimates. Each inner iteration is a forward pass
    and so updates BatchNorm running statistics.

    Options (``config.method_args``): ``lam`` (1e-3), ``inner_iters`` (3),
    ``ghost_batch_size`` (None).

    Raises:
        ConfigError: For an unknown option or an invalid value.
    """
    checks = {"lam": NONNEGATIVE, "inner_iters": POSITIVE_INT, "ghost_batch_size": GHOST}
    args = method_options(config, "conservative", CONSERVATIVE_ARGS, checks)
    lam, inner_iters, ghost = args["lam"], args["inner_iters"], args["ghost_batch_size"]

    criterion = training_loss(config)

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        params = trainable(model)
        anchor = [p.detach().clone() for p in params]  # x_k
        losses = []
        for _ in range(inner_iters):
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(model, xb, yb, ghost, criterion)
            loss.backward()
            with torch.no_grad():
                for p, a in zip(params, anchor, strict=True):
                    if p.grad is not None:
                        p.grad.add_(p - a, alpha=lam)  # grad of (lam/2)||x - x_k||^2
            opt.step()
            losses.append(loss.detach())
        return losses[0]  # f_B(x_k)

    return step


def _clip_range(clip: Any, dataset: str) -> tuple[float, float] | None:
    if clip == "auto":
        return DATA_RANGES.get(dataset)
    if clip == "none":
        return None
    return float(clip[0]), float(clip[1])


def _valid_clip(value: Any) -> bool:
    if value in ("auto", "none"):
        return True
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(is_real(v) for v in value)
        and value[0] < value[1]
    )


def adversarial(config: TrainConfig) -> StepFn:
    """Adversarial training with the fast gradient sign method.

    ``x_adv = clip(x + eps * sign(grad_x L_B(x)))`` and the step minimises
    ``alpha L_B(x) + (1 - alpha) L_B(x_adv)`` with the config's optimizer (Goodfellow et
    al. 2015, "Explaining and Harnessing Adversarial Examples", eq. 3; Keskar et al.
    2017, Appendix E, found no gain). ``x_adv`` is a constant: no gradient flows through
    its construction. Only the clean pass updates BatchNorm running statistics.

    Options (``config.method_args``): ``eps`` (0.1, in input units: MNIST and CIFAR
    pixels lie in [0, 1]); ``alpha`` (0.5); ``clip`` (``"auto"``: the dataset's pixel
    range from :data:`DATA_RANGES`, none for other data; ``"none"``; or ``[lo, hi]``);
    ``ghost_batch_size`` (None).

    Raises:
        ConfigError: For an unknown option or an invalid value.
    """
    checks = {
        "eps": NONNEGATIVE,
        "alpha": FRACTION,
        "clip": (_valid_clip, "'auto', 'none' or [lo, hi] with lo < hi"),
        "ghost_batch_size": GHOST,
    }
    args = method_options(config, "adversarial", ADVERSARIAL_ARGS, checks)
    eps, alpha, ghost = args["eps"], args["alpha"], args["ghost_batch_size"]
    bounds = _clip_range(args["clip"], config.dataset)

    criterion = training_loss(config)

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        x = xb.detach().requires_grad_(True)
        loss = batch_loss(model, x, yb, ghost, criterion)
        (grad_x,) = torch.autograd.grad(loss, x, retain_graph=True)
        x_adv = xb + eps * grad_x.sign()  # (B, ...)
        if bounds is not None:
            x_adv = x_adv.clamp(*bounds)
        with buffers_restored(model):
            loss_adv = batch_loss(model, x_adv, yb, ghost, criterion)
            (alpha * loss + (1.0 - alpha) * loss_adv).backward()
        opt.step()
        return loss.detach()

    return step


def _advance_noise_clock(opt: torch.optim.Optimizer) -> int:
    """Return this step's index ``t`` (0, 1, ...) and count it in the optimizer's state."""
    group = opt.param_groups[0]
    t = int(group.get(NOISE_STEP_KEY, 0))
    group[NOISE_STEP_KEY] = t + 1
    return t


def grad_noise(config: TrainConfig) -> StepFn:
    """Gaussian noise added to the gradient before the optimizer's step.

    ``g_t <- g_t + N(0, sigma_t^2)``, ``sigma_t^2 = eta / (1 + t)^gamma``, with ``t`` the
    step index from 0 (Neelakantan et al. 2015, "Adding Gradient Noise Improves Learning
    for Very Deep Networks", Section 2: the schedule is on the variance). ``t`` is kept in
    the optimizer's first param group (``"noise_step"``), so it survives a resume.

    Options (``config.method_args``): ``eta`` (0.01), ``gamma`` (0.55),
    ``ghost_batch_size`` (None).

    Raises:
        ConfigError: For an unknown option or an invalid value.
    """
    checks = {"eta": NONNEGATIVE, "gamma": NONNEGATIVE, "ghost_batch_size": GHOST}
    args = method_options(config, "grad_noise", GRAD_NOISE_ARGS, checks)
    eta, gamma, ghost = args["eta"], args["gamma"], args["ghost_batch_size"]

    criterion = training_loss(config)

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        std = math.sqrt(eta / (1 + _advance_noise_clock(opt)) ** gamma)
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, xb, yb, ghost, criterion)
        loss.backward()
        with torch.no_grad():
            for p in trainable(model):
                if p.grad is not None:
                    p.grad.add_(torch.randn_like(p.grad), alpha=std)
        opt.step()
        return loss.detach()

    return step


def iterate_noise(config: TrainConfig) -> StepFn:
    """Gaussian noise added to the weights after each optimizer step.

    ``w_{t+1} <- w_{t+1} + N(0, sigma_t^2)``, ``sigma_t = std / (1 + t)^(gamma/2)`` (so
    ``gamma`` decays the variance as in :func:`grad_noise`; 0 keeps it constant). Keskar
    et al. 2017, Appendix E report no gain from noisy iterates without giving a scale.

    Options (``config.method_args``): ``std`` (1e-4), ``gamma`` (0), ``ghost_batch_size``
    (None).

    Raises:
        ConfigError: For an unknown option or an invalid value.
    """
    checks = {"std": NONNEGATIVE, "gamma": NONNEGATIVE, "ghost_batch_size": GHOST}
    args = method_options(config, "iterate_noise", ITERATE_NOISE_ARGS, checks)
    std, gamma, ghost = args["std"], args["gamma"], args["ghost_batch_size"]

    criterion = training_loss(config)

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        sigma = std / (1 + _advance_noise_clock(opt)) ** (gamma / 2)
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, xb, yb, ghost, criterion)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in trainable(model):
                p.add_(torch.randn_like(p), alpha=sigma)
        return loss.detach()

    return step


def ghost_bn(config: TrainConfig) -> StepFn:
    """One optimizer step on the ghost-BatchNorm loss of :func:`batch_loss`.

    BatchNorm statistics come from virtual batches of ``ghost_batch_size`` samples inside
    the batch (Hoffer et al. 2017); the default, 256, gives a large batch the statistics
    noise of the paper's small batch. One backward pass, one optimizer step.

    Options (``config.method_args``): ``ghost_batch_size`` (256).

    Raises:
        ConfigError: For an unknown option or an invalid value.
    """
    checks = {"ghost_batch_size": POSITIVE_INT}
    ghost = method_options(config, "ghost_bn", GHOST_BN_ARGS, checks)["ghost_batch_size"]

    criterion = training_loss(config)

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, xb, yb, ghost, criterion)
        loss.backward()
        opt.step()
        return loss.detach()

    return step
