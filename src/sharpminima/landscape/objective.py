"""The functional core: a counted objective over a flat parameter vector.

Every landscape measure takes a ``loss``: either a plain callable mapping a 1-D float tensor
``x`` (shape ``(n,)``) to a differentiable scalar tensor, or an :class:`Objective`. An
objective is a protocol, not a class to inherit: anything with ``dim``, ``dtype``,
``device``, ``counters``, ``loss``, ``loss_and_grad``, ``hvp``, ``hvp_at`` and ``settings``
is one. Three implement it here:

* :class:`FunctionObjective`: a plain callable of ``x``;
* :class:`~sharpminima.landscape.model_objective.ModelObjective`: a network's mean loss
  over a data source (tensors, a DataLoader, any fixed batches) through a loss adapter;
* :class:`~sharpminima.landscape.sharded.DistributedObjective`: the mean over the data
  shards of a process group.

Measures call :func:`as_objective` once and then ask for behaviour: a network objective
(:class:`NetworkObjective`) also knows its parameters' names and shapes, evaluates accuracy
where it is defined, and gives Gauss-Newton products; nothing checks for a concrete class.
Every evaluation is counted in :attr:`Objective.counters`, and none mutates the caller's
model: a point is always set absolutely from the flat vector passed in.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError

BNMode = Literal["batch", "eval"]
LossFn = Callable[[Tensor], Tensor]


@dataclass
class Counters:
    """Running counts of full evaluations made through one objective.

    Attributes:
        num_loss: Loss evaluations (one forward pass over the objective's data each).
        num_grad: Loss-and-gradient evaluations (one forward and backward pass each).
        num_hvp: Hessian-vector products (about three gradient passes each by plain double
            backprop, about two from a kept gradient graph: see
            :class:`~sharpminima.landscape.graph_hvp.GraphHVP`).
    """

    num_loss: int = 0
    num_grad: int = 0
    num_hvp: int = 0

    def snapshot(self) -> Counters:
        """Return a copy of the current counts."""
        return Counters(self.num_loss, self.num_grad, self.num_hvp)

    def since(self, start: Counters) -> Counters:
        """Return the counts accumulated since ``start`` (a snapshot)."""
        return Counters(
            self.num_loss - start.num_loss,
            self.num_grad - start.num_grad,
            self.num_hvp - start.num_hvp,
        )


@runtime_checkable
class Objective(Protocol):
    """A scalar function ``f: R^n -> R`` with counted value, gradient and HVP evaluations.

    Attributes:
        dim: Number of parameters ``n``.
        dtype: Floating dtype of the parameter vector.
        device: Device the parameter vector lives on.
        counters: Evaluation counts (see :class:`Counters`).
    """

    dim: int
    dtype: torch.dtype
    device: torch.device
    counters: Counters

    def loss(self, x: Tensor) -> Tensor:
        """Return ``f(x)`` as a detached 0-dim tensor (one counted loss evaluation)."""
        ...

    def loss_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(f(x), grad f(x))``, both detached (one counted gradient evaluation)."""
        ...

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Return ``H(x) v``, shape ``(n,)``, detached (one counted product)."""
        ...

    def hvp_at(self, x: Tensor, *, max_graph_bytes: int | None = None) -> Callable[[Tensor], Tensor]:
        """Return ``v -> H(x) v`` for many products at one fixed point ``x``."""
        ...

    def settings(self) -> dict[str, Any]:
        """Describe how ``f`` is evaluated (recorded in every result)."""
        ...


@runtime_checkable
class NetworkObjective(Objective, Protocol):
    """An objective that is a network's mean loss over data (what some measures need).

    Attributes:
        model: The network (never modified by an evaluation).
        bn_mode: ``"batch"`` or ``"eval"`` BatchNorm statistics.
        names: Names of the trainable parameters, in the order of ``x``.
        shapes: Their shapes.
        numels: Their sizes.
        num_samples: Samples the loss averages over.
        has_accuracy: Whether :meth:`loss_and_accuracy` reports a defined accuracy.
    """

    model: nn.Module
    bn_mode: BNMode
    names: list[str]
    shapes: list[torch.Size]
    numels: list[int]
    num_samples: int
    has_accuracy: bool

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into named parameter views."""
        ...

    def base_point(self) -> Tensor:
        """The model's current trainable parameters as a flat vector (a copy)."""
        ...

    def loss_and_accuracy(self, x: Tensor) -> tuple[float, float]:
        """Mean loss and accuracy in percent (NaN where accuracy is undefined) at ``x``."""
        ...

    def ggn_vp(self, x: Tensor, v: Tensor) -> Tensor:
        """Generalised Gauss-Newton matrix at ``x`` times ``v``."""
        ...

    def with_bn_mode(self, mode: BNMode) -> NetworkObjective:
        """The same loss and data in another BatchNorm mode (a new objective)."""
        ...


class CountedObjective:
    """Counting for objectives: subclasses implement ``_loss`` and ``_loss_and_grad``.

    ``_hvp`` defaults to double backpropagation through ``__call__`` (a differentiable
    ``f(x)``); :meth:`hvp_at` to a product recomputed every time.
    """

    dim: int
    dtype: torch.dtype
    device: torch.device

    def __init__(self) -> None:
        self.counters = Counters()

    def __call__(self, x: Tensor) -> Tensor:
        """Return ``f(x)`` as a differentiable 0-dim tensor (not counted)."""
        raise NotImplementedError

    def loss(self, x: Tensor) -> Tensor:
        """Return ``f(x)`` as a detached 0-dim tensor."""
        self.counters.num_loss += 1
        with torch.no_grad():
            return self._loss(x.detach())

    def loss_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(f(x), grad f(x))``, both detached; the gradient has shape ``(n,)``."""
        self.counters.num_grad += 1
        return self._loss_and_grad(x.detach())

    def hvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Return the Hessian-vector product ``H(x) v``, shape ``(n,)``, detached."""
        self.counters.num_hvp += 1
        return self._hvp(x.detach(), v.detach())

    def hvp_at(self, x: Tensor, *, max_graph_bytes: int | None = None) -> Callable[[Tensor], Tensor]:
        """Return ``v -> H(x) v`` for many products at one fixed point ``x``.

        Each call of the returned function is one counted Hessian-vector product. This
        default recomputes every product with :meth:`hvp`; :class:`FunctionObjective` and
        the network objective keep the first-order graph at ``x`` instead
        (:class:`~sharpminima.landscape.graph_hvp.GraphHVP`).

        Args:
            x: The point, shape ``(n,)`` (copied).
            max_graph_bytes: Memory the kept graph may use (objectives that keep one).
        """
        x = x.detach().clone()
        return lambda v: self.hvp(x, v)

    def settings(self) -> dict[str, Any]:
        """Describe how the loss is evaluated (nothing to say for a plain objective)."""
        return {}

    def _loss(self, x: Tensor) -> Tensor:
        return self(x).detach()

    def _loss_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xr = x.clone().requires_grad_(True)
        with torch.enable_grad():
            value = self(xr)
            (grad,) = torch.autograd.grad(value, xr)
        return value.detach(), grad

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        xr = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self(xr), xr, create_graph=True)
            (hv,) = torch.autograd.grad(grad, xr, grad_outputs=v.to(grad.dtype))
        return hv.detach()


class FunctionObjective(CountedObjective):
    """Wrap a plain callable ``fn(x) -> scalar tensor`` as a counted objective.

    Args:
        fn: Differentiable function of a 1-D tensor.
        x: A point of the domain, used only for ``dim``, ``dtype`` and ``device``.
    """

    def __init__(self, fn: LossFn, x: Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.dim = int(x.numel())
        self.dtype = x.dtype
        self.device = x.device

    def __call__(self, x: Tensor) -> Tensor:
        """Return ``fn(x)``."""
        return self.fn(x)

    def hvp_at(self, x: Tensor, *, max_graph_bytes: int | None = None) -> Callable[[Tensor], Tensor]:
        """Return ``v -> H(x) v`` with the gradient's graph at ``x`` built once.

        The graph is built on the first product and counted as one gradient evaluation.
        ``max_graph_bytes`` is ignored (a plain function's graph is kept whole).
        """
        from sharpminima.landscape.graph_hvp import GraphHVP

        return GraphHVP(self, x, max_graph_bytes=None)


def as_objective(loss: LossFn | Objective, x: Tensor) -> Objective:
    """Return ``loss`` itself if it is an :class:`Objective`, else wrap it.

    Args:
        loss: A callable of a flat parameter vector, or an :class:`Objective`.
        x: The point the measure starts from (shape ``(n,)``).

    Raises:
        ConfigError: If ``x`` is not a 1-D floating tensor or does not match ``loss.dim``,
            or ``loss`` is neither an objective nor callable.
    """
    if not isinstance(x, Tensor) or x.ndim != 1 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        dtype = x.dtype if isinstance(x, Tensor) else None
        raise ConfigError(
            f"parameters must be a 1-D floating tensor, got shape {shape} "
            f"and dtype {dtype}; flatten them with sharpminima.landscape.flatten_params"
        )
    if isinstance(loss, Objective):
        if loss.dim != x.numel():
            raise ConfigError(
                f"parameter vector has {x.numel()} entries but the objective expects {loss.dim}"
            )
        return loss
    if not callable(loss):
        raise ConfigError(
            f"loss must be a callable of a flat vector or an Objective, got {type(loss).__name__}"
        )
    return FunctionObjective(loss, x)


def is_network(objective: Any) -> bool:
    """Whether ``objective`` is a network objective (has the :class:`NetworkObjective` API)."""
    return isinstance(objective, NetworkObjective)


def require_network(objective: Any, what: str) -> NetworkObjective:
    """Return ``objective`` if it is a network objective, else raise a clear error.

    Raises:
        ConfigError: Naming ``what`` needs a network and its data.
    """
    if not isinstance(objective, NetworkObjective):
        raise ConfigError(
            f"{what} needs a network objective (a model and its data, e.g. ModelObjective or "
            f"Landscape), got {type(objective).__name__}"
        )
    return objective


def objective_settings(objective: Any) -> dict[str, Any]:
    """An objective's :meth:`~Objective.settings`, or ``{}`` if it has none."""
    settings = getattr(objective, "settings", None)
    return dict(settings()) if callable(settings) else {}


def flatten_params(model: nn.Module) -> Tensor:
    """Return a detached copy of the model's trainable parameters as one flat vector.

    Parameters shared by several modules (tied weights) appear once, in the order of
    ``model.named_parameters()``; frozen parameters (``requires_grad=False``) are left out.
    """
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: BNMode) -> Iterator[None]:
    """Temporarily put ``model`` in a well-defined evaluation mode, then restore it exactly.

    Dropout is off in both modes.

    * ``"eval"``: every module in eval mode; BatchNorm normalises with its running statistics.
    * ``"batch"``: BatchNorm normalises with the statistics of each batch it is given (the
      authors' Keras-1 behaviour) and does not touch its running buffers
      (``track_running_stats`` is switched off for the duration); everything else is in eval
      mode.

    Args:
        model: The network; its ``training`` flags are restored on exit.
        mode: ``"batch"`` or ``"eval"``.

    Raises:
        ConfigError: If ``mode`` is not one of the two.
    """
    if mode not in ("batch", "eval"):
        raise ConfigError(f"BatchNorm mode must be 'batch' or 'eval', got {mode!r}")
    saved = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    try:
        model.eval()
        if mode == "batch":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            if track is not None:
                m.track_running_stats = track


def is_finite(value: Tensor | float) -> bool:
    """Return whether a scalar is finite."""
    return math.isfinite(float(value))


def __getattr__(name: str) -> Any:
    # ``from sharpminima.landscape.objective import ModelObjective`` (its old home) keeps
    # working; the class lives in :mod:`sharpminima.landscape.model_objective`.
    if name == "ModelObjective":
        from sharpminima.landscape.model_objective import ModelObjective

        return ModelObjective
    if name in ("GraphHVP", "default_graph_budget"):
        from sharpminima.landscape import graph_hvp

        return getattr(graph_hvp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
