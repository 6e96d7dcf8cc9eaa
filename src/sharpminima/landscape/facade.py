"""One object for users: ``Landscape(model, data)`` gives every measure.

``data`` is what :class:`~sharpminima.landscape.model_objective.ModelObjective` reads:
``Landscape(model, inputs, targets)`` for tensors, ``Landscape(model, loader)`` for a
DataLoader of ``(x, y)`` batches with cross-entropy, ``Landscape(model, loader, loss=fn)``
with ``fn(model, batch)`` returning the batch's mean loss, dict batches for Hugging Face
models (their own ``.loss``). The constructor does nothing hidden: it does not call
``.eval()``, read the data or run a backward pass, and it never moves the model. Every
method evaluates the model functionally at flat parameter vectors (default: the model's
current weights, read at call time), so the model's parameters, buffers and train/eval
flags are left as they were.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.curvature import RitzResult
from sharpminima.landscape.density import DensityResult
from sharpminima.landscape.eigen import EigenResult
from sharpminima.landscape.flatness import AverageSharpnessResult
from sharpminima.landscape.interpolate import InterpolationResult
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.noise import NoiseScaleResult
from sharpminima.landscape.norms import NormResult
from sharpminima.landscape.objective import BNMode, flatten_params
from sharpminima.landscape.operators import Operator
from sharpminima.landscape.relative_flatness import RelativeFlatnessResult
from sharpminima.landscape.results import Result
from sharpminima.landscape.sharpness import MultistartSharpnessResult, SharpnessResult
from sharpminima.landscape.surface import SurfaceResult
from sharpminima.landscape.trace import TraceResult


def _renamed(kwargs: dict[str, Any], old: str, new: str, value: Any, default: Any) -> Any:
    """Take ``old`` out of ``kwargs`` as the value of ``new`` (with a DeprecationWarning)."""
    if old not in kwargs:
        return value
    if value != default:
        raise ConfigError(f"give {new}= only ({old}= is its old name)")
    warnings.warn(f"Landscape: {old}= is deprecated, use {new}=", DeprecationWarning, stacklevel=3)
    return kwargs.pop(old)


class Landscape:
    """Loss-landscape measures of a network's mean loss over its data.

    ``f(x) = sum_b (m_b / M) L_b(x)``: the batches' mean losses weighted by their counts
    (samples, or tokens for a per-token loss), i.e. the mean over every sample of a fixed,
    finite set; BatchNorm statistics per batch in ``"batch"`` mode, running statistics in
    ``"eval"`` mode; dropout always off. See
    :class:`~sharpminima.landscape.model_objective.ModelObjective`.

    Args:
        model: The network (already on ``device``). Frozen parameters
            (``requires_grad=False``) are left out of the parameter vector; tied weights
            count once.
        data: Input tensors (with ``targets``), a DataLoader, a list of batches or a data
            source (:mod:`sharpminima.data.sources`).
        targets: Targets of tensor inputs.
        loss: ``None`` (cross-entropy for ``(x, y)`` batches, the model's ``.loss`` for
            dict batches), ``"mse"``, ``"cross_entropy"``, ``"output"``, a
            :class:`~sharpminima.losses.Loss`, or ``fn(model, batch)`` returning the batch's
            mean loss (batches weighted by their leading dimension).
        bn_mode: ``"batch"`` (Keskar et al.'s Keras behaviour; the paper's magnitudes) or
            ``"eval"`` (running statistics).
        chunk_size: Samples per forward pass of tensor data.
        loss_fn: Older form of ``loss``: ``loss_fn(outputs, targets)``.
        max_batches: Use only a loader's first batches.
        max_samples: Use only the first samples.
        device: Where the model is expected to be; a mismatch is an error rather than a
            hidden ``model.to(device)``.

    Raises:
        ConfigError: If the model is not on ``device``, or as ModelObjective does.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        targets: Tensor | None = None,
        *,
        loss: Any = None,
        bn_mode: BNMode = "batch",
        chunk_size: int = 1000,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        max_batches: int | None = None,
        max_samples: int | None = None,
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
            model, data, targets, loss=loss, loss_fn=loss_fn, bn_mode=bn_mode, chunk_size=chunk_size,
            max_batches=max_batches, max_samples=max_samples,
        )

    def point(self, x: Tensor | None = None) -> Tensor:
        """Return ``x``, or the model's current trainable parameters as a flat vector."""
        return flatten_params(self.model) if x is None else x

    def loss(self, x: Tensor | None = None) -> float:
        """Mean loss at ``x``."""
        return float(self.objective.loss(self.point(x)))

    def loss_and_accuracy(self, x: Tensor | None = None) -> tuple[float, float]:
        """Mean loss and accuracy (percent; NaN where the loss defines none) at ``x``."""
        return self.objective.loss_and_accuracy(self.point(x))

    def measure(self, name: str, *, x: Tensor | None = None, **params: Any) -> Result:
        """Any registered measure by name (:mod:`sharpminima.landscape.registry`).

        Args:
            name: e.g. ``"relative_flatness"``, ``"keskar_sharpness"``.
            x: The point (default: the model's weights).
            **params: The measure's parameters; ``x0``, ``other``, ``test`` and ``models``
                are passed as inputs instead.

        Raises:
            ConfigError: For an unknown measure or parameter.
        """
        from sharpminima.landscape.registry import compute

        inputs = {k: params.pop(k) for k in ("x0", "other", "test", "models") if k in params}
        return compute(name, self.objective, self.point(x), params, model=self.model, **inputs)

    # -- Keskar sharpness ------------------------------------------------------------------
    def keskar_sharpness(
        self,
        eps: float = 1e-3,
        *,
        subspace: str = "full",
        p: int = 100,
        seed: int = 0,
        distribution: str = "uniform",
        max_iters: int = 10,
        x: Tensor | None = None,
        **kwargs: Any,
    ) -> SharpnessResult:
        """Metric 2.1 of Keskar et al.: full space (A = I) or a random ``p``-dim subspace.

        Raises:
            ConfigError: For a subspace other than ``full`` or ``random``.
        """
        from sharpminima.landscape.sharpness import keskar_sharpness

        max_iters = _renamed(kwargs, "maxiter", "max_iters", max_iters, 10)
        if subspace not in ("full", "random"):
            raise ConfigError(f"subspace must be 'full' or 'random', got {subspace!r}")
        extra = {"p": p, "seed": seed, "distribution": distribution} if subspace == "random" else {}
        return keskar_sharpness(
            self.objective, self.point(x), eps=eps, max_iters=max_iters, **extra, **kwargs
        )

    def keskar_sharpness_multistart(
        self, eps: float = 1e-3, *, x: Tensor | None = None, **kwargs: Any
    ) -> MultistartSharpnessResult:
        """Multi-start / projected-gradient-ascent check of the inexact maximisation."""
        from sharpminima.landscape.sharpness import keskar_sharpness_multistart

        return keskar_sharpness_multistart(self.objective, self.point(x), eps=eps, **kwargs)

    # -- Hessian -----------------------------------------------------------------------------
    def _operator(self, curvature: str, x: Tensor) -> Operator | None:
        if curvature == "hessian":
            return None
        if curvature == "ggn":
            from sharpminima.landscape.operators import GGNOperator

            return GGNOperator(self.objective, x)
        raise ConfigError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")

    def top_eigenvalues(
        self, k: int = 1, *, curvature: str = "hessian", x: Tensor | None = None, **kwargs: Any
    ) -> EigenResult:
        """Top-``k`` eigenvalues of the Hessian (or Gauss-Newton) matrix, largest first."""
        from sharpminima.landscape.eigen import hessian_eigenvalues

        xp = self.point(x)
        return hessian_eigenvalues(self.objective, xp, k, operator=self._operator(curvature, xp), **kwargs)

    def trace(
        self,
        num_probes: int = 100,
        *,
        method: str = "auto",
        curvature: str = "hessian",
        x: Tensor | None = None,
        **kwargs: Any,
    ) -> TraceResult:
        """Trace estimate with its standard error from ``num_probes`` products.

        ``method`` is ``"auto"`` (XTrace; Hutchinson when ``tol`` is given), ``"hutchinson"``,
        ``"hutch++"`` or ``"xtrace"`` (which to use: :mod:`sharpminima.landscape.trace`); other
        keywords go to
        :func:`~sharpminima.landscape.trace.hessian_trace` (``seed``, ``tol``, ...).
        """
        from sharpminima.landscape.trace import hessian_trace

        num_probes = _renamed(kwargs, "samples", "num_probes", num_probes, 100)
        xp = self.point(x)
        return hessian_trace(
            self.objective, xp, num_probes=num_probes, method=method,  # type: ignore[arg-type]
            operator=self._operator(curvature, xp), **kwargs,
        )

    def density(self, *, curvature: str = "hessian", x: Tensor | None = None, **kwargs: Any) -> DensityResult:
        """Spectral density by stochastic Lanczos quadrature."""
        from sharpminima.landscape.density import spectral_density

        xp = self.point(x)
        return spectral_density(self.objective, xp, operator=self._operator(curvature, xp), **kwargs)

    def ritz_values(self, A: Tensor, *, x: Tensor | None = None) -> RitzResult:
        """Eigenvalues of the Hessian projected on the column space of ``A``."""
        from sharpminima.landscape.curvature import subspace_ritz_values

        return subspace_ritz_values(self.objective, self.point(x), A)

    def layer_eigenvalues(
        self, k: int = 1, *, x: Tensor | None = None, **kwargs: Any
    ) -> dict[str, EigenResult]:
        """Top eigenvalues of each layer's diagonal Hessian block."""
        from sharpminima.landscape.curvature import layer_eigenvalues

        return layer_eigenvalues(self.objective, self.point(x), k, **kwargs)

    def layer_traces(self, *, x: Tensor | None = None, **kwargs: Any) -> dict[str, TraceResult]:
        """Trace of each layer's diagonal Hessian block."""
        from sharpminima.landscape.curvature import layer_traces

        return layer_traces(self.objective, self.point(x), **kwargs)

    def relative_flatness(self, *, layer: str | None = None, x: Tensor | None = None,
                          **kwargs: Any) -> RelativeFlatnessResult:
        """Petzka et al.'s relative flatness of one layer (default: the last linear layer)."""
        from sharpminima.landscape.relative_flatness import relative_flatness

        return relative_flatness(self.objective, self.point(x), layer=layer, **kwargs)

    # -- other geometry ---------------------------------------------------------------------
    def average_sharpness(self, sigma: float = 1e-3, *, x: Tensor | None = None,
                          **kwargs: Any) -> AverageSharpnessResult:
        """Expected loss increase under random Gaussian perturbations (with standard error)."""
        from sharpminima.landscape.flatness import average_sharpness

        return average_sharpness(self.objective, self.point(x), sigma=sigma, **kwargs)

    def adaptive_sharpness(
        self, eps: float = 1e-3, *, x: Tensor | None = None, **kwargs: Any
    ) -> SharpnessResult:
        """Worst-case loss increase in a box scaled by |x| (ASAM-style)."""
        from sharpminima.landscape.flatness import adaptive_sharpness

        return adaptive_sharpness(self.objective, self.point(x), eps=eps, **kwargs)

    def noise_scale(self, *, x: Tensor | None = None, **kwargs: Any) -> NoiseScaleResult:
        """Gradient noise scale ``B_simple = tr(Sigma) / |G|^2``."""
        from sharpminima.landscape.noise import gradient_noise_scale

        return gradient_noise_scale(self.objective, self.point(x), **kwargs)

    def weight_norms(self, *, x: Tensor | None = None) -> NormResult:
        """Total and per-layer weight norms."""
        from sharpminima.landscape.norms import weight_norms

        return weight_norms(self.point(x), self.objective)

    def distance(self, x0: Tensor, *, x: Tensor | None = None) -> NormResult:
        """``||x - x0||``, total and per layer (e.g. from the initial weights)."""
        from sharpminima.landscape.norms import parameter_distance

        return parameter_distance(self.point(x), x0, self.objective)

    def interpolate(self, other: Tensor | nn.Module, *, x: Tensor | None = None,
                    **kwargs: Any) -> InterpolationResult:
        """Loss and accuracy on the path from ``x`` (the model's weights) to ``other``.

        Args:
            other: The other end: a flat vector or a network of the same architecture.
            x: The start (default: the model's weights).
            **kwargs: See :func:`~sharpminima.landscape.interpolate.interpolate`.
        """
        from sharpminima.landscape.interpolate import interpolate

        end = flatten_params(other) if isinstance(other, nn.Module) else other
        return interpolate(self.objective, self.point(x), end, **kwargs)

    def surface(
        self,
        *,
        dims: int = 1,
        seed: int = 0,
        alphas: Sequence[float] | Tensor | None = None,
        betas: Sequence[float] | Tensor | None = None,
        x: Tensor | None = None,
    ) -> SurfaceResult:
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
