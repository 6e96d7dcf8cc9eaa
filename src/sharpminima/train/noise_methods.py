"""Large-batch steps with injected gradient noise of a smaller batch's magnitude.

The method ``batch_noise`` asks Zhu et al.'s question ("The Anisotropic Noise in Stochastic
Gradient Descent", ICML 2019): does a large batch ``B`` recover a small batch ``b``'s minima
when it gets ``b``'s gradient noise, and does the noise's *structure* matter?

With per-example losses ``l_i`` of the batch, gradients ``g_i`` and mean ``g_bar``, the
minibatch gradient of ``b`` samples has covariance about ``Sigma / b`` (``Sigma`` the
per-example gradient covariance) and that of ``B`` samples ``Sigma / B``. The step adds

* ``"anisotropic"``: ``n = (c / B) sum_i s_i (g_i - g_bar)``, ``s_i ~ N(0, 1)`` i.i.d., so
  ``Cov(n | batch) = c^2 / B^2 sum_i (g_i - g_bar)(g_i - g_bar)^T = c^2 (B - 1) / B^2 S_B``
  (``S_B`` the batch's unbiased sample covariance, an estimate of ``Sigma``). With
  ``c^2 = scale^2 B (B - b) / (b (B - 1))`` this is ``scale^2 (1/b - 1/B) S_B``: the large
  batch's own noise plus ``n`` then has the small batch's covariance ``Sigma / b`` (for
  ``scale=1``), with its structure. ``n`` is the gradient of the weighted loss
  ``sum_i (c (s_i - s_bar) / B) l_i``, so the whole step is one backward pass of
  ``sum_i (1/B + c (s_i - s_bar) / B) l_i`` (Wen et al. 2019's multiplicative noise).
* ``"isotropic"``: ``z * |n| / sqrt(P)`` with ``z ~ N(0, I_P)`` over the ``P`` trainable
  parameters and ``n`` an independent anisotropic draw: mean zero, covariance
  ``E|n|^2 / P * I``, the same trace as the anisotropic noise and no structure. It costs a
  second backward pass.

With BatchNorm in training mode the per-example losses are coupled through the batch
statistics; ``g_i`` is then the gradient of the batch loss's ``i``-th term, and the
covariance above is that of those terms. Noise is drawn from torch's global generator,
which the loop reseeds at every epoch start, so a resumed run is bit-identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sharpminima.config import SB_BATCH_SIZE, TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.train.step_parts import NONNEGATIVE, POSITIVE_INT, StepFn, method_options, trainable

#: Options of ``batch_noise``: the small batch whose noise is injected, its structure, a factor.
BATCH_NOISE_ARGS: dict[str, object] = {
    "noise_batch_size": SB_BATCH_SIZE,
    "structure": "anisotropic",
    "scale": 1.0,
}

#: Noise structures of ``batch_noise``.
STRUCTURES = ("anisotropic", "isotropic")


def noise_coefficient(batch_size: int, noise_batch_size: int, scale: float = 1.0) -> float:
    """``c`` with ``c^2 = scale^2 B (B - b) / (b (B - 1))`` (0 when ``b >= B`` or ``B = 1``).

    Args:
        batch_size: The step's batch ``B``.
        noise_batch_size: The batch ``b`` whose noise the step gets.
        scale: Factor on the noise's standard deviation.
    """
    big, small = batch_size, noise_batch_size
    if small >= big or big < 2:
        return 0.0
    return scale * math.sqrt(big * (big - small) / (small * (big - 1)))


def example_losses(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    """Per-example cross-entropy ``l_i = -log softmax(model(x_i))[y_i]``, shape ``(B,)``."""
    return F.cross_entropy(model(xb), yb, reduction="none")  # (B,)


def noise_weights(batch_size: int, coefficient: float, like: Tensor) -> Tensor:
    """Centred Gaussian weights ``c (s_i - s_bar) / B`` of the anisotropic noise, shape ``(B,)``."""
    s = torch.randn(batch_size, dtype=like.dtype, device=like.device)  # global generator
    return coefficient * (s - s.mean()) / batch_size


def anisotropic_noise(
    losses: Tensor, params: list[nn.Parameter], coefficient: float, *, retain_graph: bool = True
) -> list[Tensor]:
    """One draw of ``n = (c / B) sum_i s_i (g_i - g_bar)`` as per-parameter tensors.

    Args:
        losses: Per-example losses ``(B,)`` attached to the graph.
        params: The parameters ``g_i`` is taken with respect to.
        coefficient: ``c`` (see :func:`noise_coefficient`).
        retain_graph: Keep the graph for a later backward pass.
    """
    w = noise_weights(len(losses), coefficient, losses)
    grads = torch.autograd.grad((w * losses).sum(), params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def isotropic_noise(
    losses: Tensor, params: list[nn.Parameter], coefficient: float, *, retain_graph: bool = True
) -> list[Tensor]:
    """One draw of ``z |n| / sqrt(P)``: isotropic, with the anisotropic draw's trace in expectation."""
    n = anisotropic_noise(losses, params, coefficient, retain_graph=retain_graph)
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in n))  # type: ignore[arg-type]
    num_params = sum(p.numel() for p in params)
    std = float(norm) / math.sqrt(num_params)
    return [torch.randn_like(p) * std for p in params]


def batch_noise(config: TrainConfig) -> StepFn:
    """A step of the batch's mean cross-entropy plus injected noise of a smaller batch.

    See the module docstring for the maths. Options (``config.method_args``):
    ``noise_batch_size`` (256: the paper's SB), ``structure`` (``"anisotropic"`` or
    ``"isotropic"``), ``scale`` (1.0, a factor on the noise's standard deviation). A
    batch no larger than ``noise_batch_size`` gets no noise. Only cross-entropy training
    is supported (the noise needs per-example losses).

    Raises:
        ConfigError: For an unknown option, an invalid value or a loss other than
            cross-entropy.
    """
    checks = {
        "noise_batch_size": POSITIVE_INT,
        "structure": (lambda v: v in STRUCTURES, f"one of {list(STRUCTURES)}"),
        "scale": NONNEGATIVE,
    }
    args = method_options(config, "batch_noise", BATCH_NOISE_ARGS, checks)
    if config.loss != "cross_entropy":
        raise ConfigError(f"method 'batch_noise' needs per-example cross-entropy, not loss {config.loss!r}")
    small, structure, scale = args["noise_batch_size"], args["structure"], float(args["scale"])

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        losses = example_losses(model, xb, yb)  # (B,)
        mean = losses.mean()
        c = noise_coefficient(len(xb), small, scale)
        if c == 0.0:
            mean.backward()
        elif structure == "anisotropic":  # one backward pass of the reweighted loss
            w = noise_weights(len(losses), c, losses)
            ((1.0 / len(losses) + w) * losses).sum().backward()
        else:
            params = trainable(model)
            noise = isotropic_noise(losses, params, c)
            mean.backward()
            with torch.no_grad():
                for p, n in zip(params, noise, strict=True):
                    if p.grad is not None:
                        p.grad.add_(n)
        opt.step()
        return mean.detach()

    return step
