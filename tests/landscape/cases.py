"""Float64 dense reference cases shared by the landscape tests.

Small enough that the dense Hessian (``torch.autograd.functional.hessian``) and its full
eigendecomposition take milliseconds, large enough (a few hundred parameters) that the
matrix-free methods have something to do. Append new cases at the end; do not change the
existing ones (other tests pin numbers to them).

Import with ``from cases import ...`` (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpminima.landscape.objective import ModelObjective

DTYPE = torch.float64


def tiny_mlp(*, batch_norm: bool, seed: int = 0, activation: type[nn.Module] = nn.Tanh) -> nn.Module:
    """6 -> 12 -> 10 -> 4 MLP in float64 (258 parameters; 302 with BatchNorm).

    With ``batch_norm`` each hidden layer is ``Linear, BatchNorm1d, activation``; the running
    statistics are moved off their defaults (a few training-mode forward passes on other
    data, then a perturbation of the affine parameters), so ``"eval"`` and ``"batch"`` BN
    modes give different functions. Tanh keeps the loss smooth for finite differences.
    """
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    sizes = [6, 12, 10]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers.append(nn.Linear(fan_in, fan_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(fan_out))
        layers.append(activation())
    layers.append(nn.Linear(sizes[-1], 4))
    model = nn.Sequential(*layers).to(DTYPE)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE) * 0.6)
        if batch_norm:
            model.train()
            for _ in range(3):
                model(torch.randn(32, 6, generator=g, dtype=DTYPE) * 1.5 + 0.3)
            model.eval()
    return model


def tiny_data(n: int = 64, seed: int = 1) -> tuple[Tensor, Tensor]:
    """``n`` float64 inputs ``(n, 6)`` and labels in ``[0, 4)``."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 6, generator=g, dtype=DTYPE)
    targets = torch.randint(0, 4, (n,), generator=g)
    return inputs, targets


@dataclass
class MLPCase:
    """A tiny network, its data and an objective, with a dense Hessian reference."""

    name: str
    model: nn.Module
    inputs: Tensor
    targets: Tensor
    bn_mode: str
    chunk_size: int

    def objective(self) -> ModelObjective:
        """A fresh objective (fresh counters) over the case's data."""
        return ModelObjective(
            self.model, self.inputs, self.targets, bn_mode=self.bn_mode,  # type: ignore[arg-type]
            chunk_size=self.chunk_size,
        )

    @property
    def x0(self) -> Tensor:
        return self.objective().base_point()

    @functools.cached_property
    def hessian(self) -> Tensor:
        """Dense Hessian ``(n, n)`` of the mean loss at ``x0``, symmetrised."""
        obj = self.objective()
        h = torch.autograd.functional.hessian(obj, self.x0, vectorize=True)
        return (h + h.T) / 2

    @functools.cached_property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues of :attr:`hessian`, largest first."""
        return torch.linalg.eigvalsh(self.hessian).flip(0)


# Chunks of 32 out of 64 samples: in "batch" mode BatchNorm statistics are per chunk.
_SPECS = {
    "plain": (False, "eval"),
    "bn-batch": (True, "batch"),
    "bn-eval": (True, "eval"),
}


@functools.cache
def mlp_case(name: str) -> MLPCase:
    """The named case: ``"plain"`` (no BN), ``"bn-batch"`` or ``"bn-eval"``."""
    batch_norm, mode = _SPECS[name]
    inputs, targets = tiny_data()
    return MLPCase(name, tiny_mlp(batch_norm=batch_norm), inputs, targets, mode, 32)


MLP_CASES = tuple(_SPECS)


def known_spectrum(eigenvalues: list[float] | Tensor, seed: int = 0) -> Tensor:
    """Dense symmetric float64 matrix ``Q diag(eigenvalues) Q^T`` with a random orthogonal Q."""
    lam = torch.as_tensor(eigenvalues, dtype=DTYPE)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=g, dtype=DTYPE))
    return (q * lam) @ q.T


def quadratic(eigenvalues: list[float] | Tensor, seed: int = 0):
    """``f(x) = 0.5 x^T A x + b^T x`` with known Hessian ``A``; returns ``(f, A, x0)``."""
    a = known_spectrum(eigenvalues, seed)
    g = torch.Generator().manual_seed(seed + 1)
    b = torch.randn(a.shape[0], generator=g, dtype=DTYPE)
    x0 = torch.randn(a.shape[0], generator=g, dtype=DTYPE)

    def f(x: Tensor) -> Tensor:
        return 0.5 * x @ (a @ x) + b @ x

    return f, a, x0


def state_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copies of every parameter and buffer, to check that a measure left them bit-identical."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_untouched(model: nn.Module, before: dict[str, Tensor]) -> None:
    """Assert every parameter and buffer equals its snapshot bit for bit and has no grad."""
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert torch.equal(v.detach(), before[k]), k
        assert v.grad is None, k


# --- Cases for the sharpness / geometry / interpolation tests (appended) ------------------


def separable_convex(n: int = 12, seed: int = 0):
    """``f(x) = sum_i c_i (x_i - m_i)^2`` with ``c_i > 0`` and ``x`` away from ``m``.

    Returns ``(f, x, box_max)``: ``box_max(halfwidth)`` is the exact maximum of ``f`` over
    ``|z_i| <= halfwidth_i`` around ``x`` (per coordinate, the endpoint farther from
    ``m_i``).
    """
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, generator=g, dtype=DTYPE) + 0.5
    m = torch.randn(n, generator=g, dtype=DTYPE)
    x = m + (torch.rand(n, generator=g, dtype=DTYPE) + 0.1) * torch.where(
        torch.rand(n, generator=g, dtype=DTYPE) < 0.5, -1.0, 1.0
    )

    def f(z: Tensor) -> Tensor:
        return (c * (z - m) ** 2).sum()

    def box_max(halfwidth: Tensor) -> float:
        return float((c * ((x - m).abs() + halfwidth) ** 2).sum())

    return f, x, box_max


def linear_regression(
    num_samples: int, dim: int = 5, noise: float = 1.0, shift: float = 1.0, seed: int = 0
):
    """Least squares with Gaussian inputs and a known per-example gradient distribution.

    ``loss_i(w) = (w . a_i - b_i)^2 / 2`` with ``a_i ~ N(0, I_d)``, ``b_i = w* . a_i +
    noise * e_i``. At ``w = w* + delta`` (``||delta|| = shift``) the per-example gradient
    ``(delta . a_i - noise e_i) a_i`` has mean ``G = delta`` and
    ``tr(Sigma) = (d + 1) ||delta||^2 + d noise^2``.

    Returns ``(model, inputs, targets, loss_fn, b_simple)`` with the model at ``w``.
    """
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(dim, generator=g, dtype=DTYPE)
    delta = torch.randn(dim, generator=g, dtype=DTYPE)
    delta = delta / delta.norm() * shift
    inputs = torch.randn(num_samples, dim, generator=g, dtype=DTYPE)
    targets = inputs @ w_star + noise * torch.randn(num_samples, generator=g, dtype=DTYPE)
    model = nn.Linear(dim, 1, bias=False).to(DTYPE)
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        return 0.5 * ((out[:, 0] - y) ** 2).mean()

    b_simple = ((dim + 1) * shift**2 + dim * noise**2) / shift**2
    return model, inputs, targets, loss_fn, b_simple
