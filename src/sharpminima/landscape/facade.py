"""One object for users: ``Landscape(model, inputs, targets)`` gives every measure.

The constructor does nothing hidden: it does not call ``.eval()`` or run a backward pass,
and it never moves the model. Every method evaluates the model functionally at flat
parameter vectors (default: the model's current weights, read at call time), so the
model's parameters, buffers and train/eval flags are left as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import BNMode, ModelObjective, flatten_params


class Landscape:
    """Loss-landscape measures of a network's mean loss over a dataset.

    ``f(x) = (1/N) sum_i loss(model(x; a_i), b_i)`` over the ``N`` samples given, evaluated
    in chunks of ``chunk_size`` (chunk means weighted by size; BatchNorm statistics per chunk
    in ``"batch"`` mode, running statistics in ``"eval"`` mode). Dropout is always off.

    Args:
        model: The network (already on ``device``).
        inputs: Inputs ``(N, ...)``; moved chunk by chunk to the model's device.
        targets: Integer labels ``(N,)``.
        bn_mode: ``"batch"`` (Keskar et al.'s Keras behaviour; the paper's magnitudes) or
            ``"eval"`` (running statistics).
        chunk_size: Samples per forward pass.
        loss_fn: Per-batch mean loss; cross-entropy by default.
        device: Where the model is expected to be; a mismatch is an error rather than a
            hidden ``model.to(device)``.

    Raises:
        ConfigError: If the model is not on ``device``.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        *,
        bn_mode: BNMode = "batch",
        chunk_size: int = 1000,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
        device: str | torch.device | None = None,
    ) -> None:
        if device is not None:
            have = next(model.parameters()).device
            want = torch.device(device)
            if have.type != want.type or (want.index is not None and have.index != want.index):
                raise ConfigError(
                    f"the model is on {have} but device={want}; call model.to({str(want)!r}) first"
                )
        self.model = model
        self.objective = ModelObjective(
            model, inputs, targets, bn_mode=bn_mode, chunk_size=chunk_size, loss_fn=loss_fn
        )

    def point(self, x: Tensor | None = None) -> Tensor:
        """Return ``x``, or the model's current trainable parameters as a flat vector."""
        return flatten_params(self.model) if x is None else x

    def loss(self, x: Tensor | None = None) -> float:
        """Mean loss at ``x``."""
        return float(self.objective.loss(self.point(x)))

    def loss_and_accuracy(self, x: Tensor | None = None) -> tuple[float, float]:
        """Mean loss and accuracy (percent) at ``x``."""
        return self.objective.loss_and_accuracy(self.point(x))

    # -- Keskar sharpness ------------------------------------------------------------------
    def keskar_sharpness(
        self,
        eps: float = 1e-3,
        *,
        subspace: str = "full",
        p: int = 100,
        seed: int = 0,
        distribution: str = "uniform",
        maxiter: int = 10,
        x: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Metric 2.1 of Keskar et al.: full space (A = I) or a random ``p``-dim subspace.

        Raises:
            ConfigError: For a subspace other than ``full`` or ``random``.
        """
        from sharpminima.landscape.sharpness import keskar_sharpness

        if subspace not in ("full", "random"):
            raise ConfigError(f"subspace must be 'full' or 'random', got {subspace!r}")
        extra = {"p": p, "seed": seed, "distribution": distribution} if subspace == "random" else {}
        return keskar_sharpness(self.objective, self.point(x), eps=eps, maxiter=maxiter, **extra, **kwargs)

    def keskar_sharpness_multistart(
        self, eps: float = 1e-3, *, x: Tensor | None = None, **kwargs: Any
    ) -> Any:
        """Multi-start / projected-gradient-ascent check of the inexact maximisation."""
        from sharpminima.landscape.sharpness import keskar_sharpness_multistart

        return keskar_sharpness_multistart(self.objective, self.point(x), eps=eps, **kwargs)

    # -- Hessian -----------------------------------------------------------------------------
    def _operator(self, curvature: str, x: Tensor) -> Any:
        if curvature == "hessian":
            return None
        if curvature == "ggn":
            from sharpminima.landscape.operators import GGNOperator

            return GGNOperator(self.objective, x)
        raise ConfigError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")

    def top_eigenvalues(
        self, k: int = 1, *, curvature: str = "hessian", x: Tensor | None = None, **kwargs: Any
    ) -> Any:
        """Top-``k`` eigenvalues of the Hessian (or Gauss-Newton) matrix, largest first."""
        from sharpminima.landscape.eigen import hessian_eigenvalues

        xp = self.point(x)
        return hessian_eigenvalues(self.objective, xp, k, operator=self._operator(curvature, xp), **kwargs)

    def trace(
        self, samples: int = 100, *, curvature: str = "hessian", x: Tensor | None = None, **kwargs: Any
    ) -> Any:
        """Hutchinson trace estimate with its standard error."""
        from sharpminima.landscape.trace import hessian_trace

        xp = self.point(x)
        return hessian_trace(
            self.objective, xp, samples=samples, operator=self._operator(curvature, xp), **kwargs
        )

    def density(self, *, curvature: str = "hessian", x: Tensor | None = None, **kwargs: Any) -> Any:
        """Spectral density by stochastic Lanczos quadrature."""
        from sharpminima.landscape.density import spectral_density

        xp = self.point(x)
        return spectral_density(self.objective, xp, operator=self._operator(curvature, xp), **kwargs)

    def ritz_values(self, A: Tensor, *, x: Tensor | None = None) -> Any:
        """Eigenvalues of the Hessian projected on the column space of ``A``."""
        from sharpminima.landscape.curvature import subspace_ritz_values

        return subspace_ritz_values(self.objective, self.point(x), A)

    def layer_eigenvalues(self, k: int = 1, *, x: Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        """Top eigenvalues of each layer's diagonal Hessian block."""
        from sharpminima.landscape.curvature import layer_eigenvalues

        return layer_eigenvalues(self.objective, self.point(x), k, **kwargs)

    def layer_traces(self, *, x: Tensor | None = None, **kwargs: Any) -> dict[str, Any]:
        """Trace of each layer's diagonal Hessian block."""
        from sharpminima.landscape.curvature import layer_traces

        return layer_traces(self.objective, self.point(x), **kwargs)

    # -- other geometry ---------------------------------------------------------------------
    def average_sharpness(self, sigma: float = 1e-3, *, x: Tensor | None = None, **kwargs: Any) -> Any:
        """Expected loss increase under random Gaussian perturbations (with standard error)."""
        from sharpminima.landscape.geometry import average_sharpness

        return average_sharpness(self.objective, self.point(x), sigma=sigma, **kwargs)

    def adaptive_sharpness(self, eps: float = 1e-3, *, x: Tensor | None = None, **kwargs: Any) -> Any:
        """Worst-case loss increase in a box scaled by |x| (ASAM-style)."""
        from sharpminima.landscape.geometry import adaptive_sharpness

        return adaptive_sharpness(self.objective, self.point(x), eps=eps, **kwargs)

    def noise_scale(self, *, x: Tensor | None = None, **kwargs: Any) -> Any:
        """Gradient noise scale ``B_simple = tr(Sigma) / |G|^2``."""
        from sharpminima.landscape.geometry import gradient_noise_scale

        return gradient_noise_scale(self.objective, self.point(x), **kwargs)

    def weight_norms(self, *, x: Tensor | None = None) -> Any:
        """Total and per-layer weight norms."""
        from sharpminima.landscape.geometry import weight_norms

        return weight_norms(self.point(x), self.objective)

    def distance(self, x0: Tensor, *, x: Tensor | None = None) -> Any:
        """``||x - x0||``, total and per layer (e.g. from the initial weights)."""
        from sharpminima.landscape.geometry import parameter_distance

        return parameter_distance(self.point(x), x0, self.objective)

    def surface(
        self,
        *,
        dims: int = 1,
        seed: int = 0,
        alphas: Sequence[float] | Tensor | None = None,
        betas: Sequence[float] | Tensor | None = None,
        x: Tensor | None = None,
    ) -> Any:
        """Filter-normalised random-direction loss surface, 1-D or 2-D.

        Raises:
            ConfigError: If ``dims`` is not 1 or 2.
        """
        from sharpminima.landscape.surface import loss_surface_1d, loss_surface_2d, random_direction

        xp = self.point(x)
        d = random_direction(xp, self.objective, seed=seed)
        if dims == 1:
            return loss_surface_1d(self.objective, xp, d, alphas)
        if dims == 2:
            e = random_direction(xp, self.objective, seed=seed + 1)
            return loss_surface_2d(self.objective, xp, d, e, alphas, betas)
        raise ConfigError(f"surface dims must be 1 or 2, got {dims}")
