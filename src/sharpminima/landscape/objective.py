"""The functional core: a counted objective over a flat parameter vector.

Every landscape measure takes a ``loss``: either a plain callable mapping a 1-D float tensor
``x`` (shape ``(n,)``) to a differentiable scalar tensor, or an :class:`Objective` such as
:class:`ModelObjective`, which evaluates a network's mean loss over a dataset. Measures call
:func:`as_objective` once and then use only :meth:`Objective.loss`,
:meth:`Objective.loss_and_grad` and :meth:`Objective.hvp`, each of which is counted in
:attr:`Objective.counters`. No evaluation mutates the caller's model: a point is always set
absolutely from the flat vector passed in, never walked in place.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from sharpminima.errors import ConfigError

log = logging.getLogger(__name__)

BNMode = Literal["batch", "eval"]
LossFn = Callable[[Tensor], Tensor]


@dataclass
class Counters:
    """Running counts of full evaluations made through one objective.

    Attributes:
        num_loss: Loss evaluations (one forward pass over the objective's data each).
        num_grad: Loss-and-gradient evaluations (one forward and backward pass each).
        num_hvp: Hessian-vector products (about three gradient passes each by plain double
            backprop, about two from a kept gradient graph: see :class:`GraphHVP`).
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


class Objective:
    """A scalar function ``f: R^n -> R`` with counted value, gradient and HVP evaluations.

    Subclasses implement :meth:`_loss` and :meth:`_loss_and_grad`; :meth:`_hvp` defaults to
    double backpropagation through :meth:`__call__`.

    Attributes:
        dim: Number of parameters ``n``.
        dtype: Floating dtype of the parameter vector.
        device: Device the parameter vector lives on.
        counters: Evaluation counts (see :class:`Counters`).
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
        :class:`ModelObjective` instead keep the first-order graph at ``x`` (see
        :class:`GraphHVP`), so each product is one reverse pass through the gradient's
        graph rather than a forward, a backward and that reverse pass.

        Args:
            x: The point, shape ``(n,)`` (copied).
            max_graph_bytes: Memory the kept graph may use (objectives that keep one).
        """
        x = x.detach().clone()
        return lambda v: self.hvp(x, v)

    # -- defaults built on __call__ -------------------------------------------------------
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


class FunctionObjective(Objective):
    """Wrap a plain callable ``fn(x) -> scalar tensor`` as a counted :class:`Objective`.

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

    def hvp_at(self, x: Tensor, *, max_graph_bytes: int | None = None) -> GraphHVP:
        """Return ``v -> H(x) v`` with the gradient's graph at ``x`` built once.

        The graph is built on the first product and counted as one gradient evaluation.
        ``max_graph_bytes`` is ignored (a plain function's graph is kept whole).
        """
        return GraphHVP(self, x, max_graph_bytes=None)


def default_graph_budget(device: torch.device) -> int:
    """Bytes a kept gradient graph may take by default on ``device``.

    CUDA: half of the device's free memory. CPU: a quarter of the available physical
    memory (Linux ``sysconf``), or 2 GiB where that is unknown.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # memory PyTorch's caching allocator holds but does not use is free to us too
        idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + idle) // 2)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    except (ValueError, OSError, AttributeError):
        return 2 << 30


class GraphHVP:
    """Hessian-vector products at a fixed point from a first-order graph kept in memory.

    ``H(x) v`` is the vector-Jacobian product of ``g(x) = grad f(x)`` with ``v`` (``H`` is
    symmetric). Double backpropagation builds ``g``'s graph (a forward and a backward pass)
    and then differentiates it; at a fixed ``x`` that graph is the same for every ``v``, so
    it is built once, on the first product, and each product is then a single reverse pass
    through it (about 6 instead of 9 matrix products per dense layer). Building it is
    counted as one gradient evaluation, each product as one HVP.

    For a :class:`ModelObjective` the graph is built chunk by chunk while the tensors it
    saves fit in ``max_graph_bytes``; chunks past that budget are recomputed at every
    product by plain double backpropagation, so memory never exceeds the budget by more
    than one chunk's graph. The value equals :meth:`Objective.hvp` to float round-off.

    Memory is counted as the graph is built: on CUDA as the growth of allocated device
    memory per chunk; elsewhere as the bytes of the distinct storages the graph saves,
    leaving out the parameter vector, the dataset and the model's buffers, which exist
    anyway. The graph holds the model's buffers as they were (running statistics in
    ``"eval"`` mode): changing them in place while products are still wanted makes the
    next product fail; call :meth:`release` first.

    Args:
        objective: A :class:`FunctionObjective` or :class:`ModelObjective`.
        x: The point, shape ``(n,)`` (copied).
        max_graph_bytes: Budget for the kept graph (``None``: :func:`default_graph_budget`;
            unbounded for a :class:`FunctionObjective`).

    Attributes:
        cached_chunks: Chunks whose graph is kept (``None`` before the first product; a
            :class:`FunctionObjective` counts as one chunk).
        num_chunks: Chunks of the objective (1 for a plain function).
        graph_bytes: Bytes of the tensors the kept graph saves (counted as they are saved).
    """

    def __init__(self, objective: Objective, x: Tensor, *, max_graph_bytes: int | None = None) -> None:
        if max_graph_bytes is not None and max_graph_bytes < 0:
            raise ConfigError(f"max_graph_bytes must be >= 0, got {max_graph_bytes}")
        self.objective = objective
        self.x = x.detach().clone()
        self.max_graph_bytes = max_graph_bytes
        self.cached_chunks: int | None = None
        self.num_chunks = 1
        self.graph_bytes = 0
        self._xr: Tensor | None = None
        self._grad: Tensor | None = None

    def release(self) -> None:
        """Free the kept graph (the next product builds it again)."""
        self._xr = self._grad = None
        self.cached_chunks = None

    def __call__(self, v: Tensor) -> Tensor:
        """Return ``H(x) v``, shape ``(n,)``, detached (one counted HVP)."""
        if self.cached_chunks is None:
            self._build()
        self.objective.counters.num_hvp += 1
        v = v.detach().to(dtype=self.x.dtype, device=self.x.device)
        out = torch.zeros_like(self.x)
        if self._grad is not None and self._grad.requires_grad:
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(
                    self._grad, self._xr, grad_outputs=v, retain_graph=True, allow_unused=True
                )
            if hv is not None:
                out += hv
        obj = self.objective
        if isinstance(obj, ModelObjective) and self.cached_chunks < self.num_chunks:
            out += obj._hvp(self.x, v, first_chunk=self.cached_chunks)
        return out

    def _build(self) -> None:
        obj = self.objective
        obj.counters.num_grad += 1
        xr = self.x.clone().requires_grad_(True)
        if not isinstance(obj, ModelObjective):
            with torch.enable_grad():
                value = obj(xr)
                (grad,) = torch.autograd.grad(value, xr, create_graph=True)
            self._xr, self._grad, self.cached_chunks = xr, grad, 1
            return
        budget = default_graph_budget(obj.device) if self.max_graph_bytes is None else self.max_graph_bytes
        self.num_chunks = math.ceil(obj.num_samples / obj.chunk_size)
        cuda = obj.device.type == "cuda"
        # storages that exist without the graph: x, the dataset, the model's tensors
        existing = {xr.untyped_storage().data_ptr(), obj.inputs.untyped_storage().data_ptr()}
        existing |= {t.untyped_storage().data_ptr() for t in obj.model.state_dict().values()}
        seen: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in existing:
                seen[ptr] = t.untyped_storage().nbytes()
            # detached: a saved output holding itself would make a cycle autograd never frees
            return t.detach()

        params = obj.unflatten(xr)
        total: Tensor | None = None
        cached = 0
        used = 0
        with bn_mode(obj.model, obj.bn_mode), torch.enable_grad():
            for xb, yb, w in obj.chunks():
                seen.clear()
                start = torch.cuda.memory_allocated(obj.device) if cuda else 0
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    (g,) = torch.autograd.grad(obj._chunk_loss(params, xb, yb), xr, create_graph=True)
                grown = torch.cuda.memory_allocated(obj.device) - start if cuda else sum(seen.values())
                if used + grown > budget:
                    break  # this chunk's graph is dropped with g; it and the rest are recomputed
                total = w * g if total is None else total + w * g
                used += grown
                cached += 1
        self._xr, self._grad, self.cached_chunks, self.graph_bytes = xr, total, cached, used
        if cached < self.num_chunks:
            log.info(
                "HVP graph: %d of %d chunks kept (%.2f GB budget); the rest are recomputed per product",
                cached, self.num_chunks, budget / 1e9,
            )


def as_objective(loss: LossFn | Objective, x: Tensor) -> Objective:
    """Return ``loss`` itself if it is an :class:`Objective`, else wrap it.

    Args:
        loss: A callable of a flat parameter vector, or an :class:`Objective`.
        x: The point the measure starts from (shape ``(n,)``).

    Raises:
        ConfigError: If ``x`` is not a 1-D floating tensor or does not match ``loss.dim``.
    """
    if x.ndim != 1 or not x.is_floating_point():
        raise ConfigError(
            f"parameters must be a 1-D floating tensor, got shape {tuple(x.shape)} "
            f"and dtype {x.dtype}; flatten them with sharpminima.landscape.flatten_params"
        )
    if isinstance(loss, Objective):
        if loss.dim != x.numel():
            raise ConfigError(
                f"parameter vector has {x.numel()} entries but the objective expects {loss.dim}"
            )
        return loss
    return FunctionObjective(loss, x)


def flatten_params(model: nn.Module) -> Tensor:
    """Return a detached copy of the model's trainable parameters as one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: BNMode) -> Iterator[None]:
    """Temporarily put ``model`` in a well-defined evaluation mode, then restore it exactly.

    Dropout is off in both modes.

    * ``"eval"``: every module in eval mode; BatchNorm normalises with its running statistics.
    * ``"batch"``: BatchNorm normalises with the statistics of each chunk it is given (the
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


class ModelObjective(Objective):
    """Mean loss of a network over a fixed dataset, as a function of its flat parameters.

    ``f(x) = (1/N) sum_{i=1}^N loss(model(x; a_i), b_i)``, evaluated in chunks of
    ``chunk_size`` samples; chunk means are weighted by chunk size, so the value, gradient
    and Hessian-vector product are those of the mean over all ``N`` samples, whatever the
    chunking (in ``"eval"`` BN mode exactly; in ``"batch"`` mode the chunks define the
    function, since BatchNorm statistics are per chunk). Chunks are fixed (samples
    ``[0, c), [c, 2c), ...``), so ``f`` is a deterministic function of ``x``.

    The model is evaluated with :func:`torch.func.functional_call` on parameters built from
    ``x``; its own parameters and buffers are never modified.

    Args:
        model: The network. Only parameters with ``requires_grad`` are in ``x``.
        inputs: Inputs ``(N, ...)``; moved chunk by chunk to the model's device.
        targets: Integer class labels ``(N,)``.
        bn_mode: ``"batch"`` (statistics of each chunk, Keskar et al.'s Keras behaviour) or
            ``"eval"`` (running statistics). Recorded in every result.
        chunk_size: Samples per forward pass.
        loss_fn: Per-batch mean loss ``loss_fn(logits, targets)``; cross-entropy by default.

    Raises:
        ConfigError: If the data are empty or mismatched, or ``chunk_size`` < 1.
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
    ) -> None:
        super().__init__()
        if inputs.shape[0] == 0 or inputs.shape[0] != targets.shape[0]:
            raise ConfigError(
                f"need as many targets as inputs (and at least one), got {inputs.shape[0]} "
                f"inputs and {targets.shape[0]} targets"
            )
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size}")
        if bn_mode not in ("batch", "eval"):
            raise ConfigError(f"BatchNorm mode must be 'batch' or 'eval', got {bn_mode!r}")
        self.model = model
        self.inputs = inputs
        self.targets = targets
        self.bn_mode: BNMode = bn_mode
        self.chunk_size = int(chunk_size)
        self.loss_fn = loss_fn
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        first = named[0][1]
        self.dim = int(sum(self.numels))
        self.dtype = first.dtype
        self.device = first.device

    @property
    def num_samples(self) -> int:
        """Number of samples ``N`` the loss averages over."""
        return int(self.inputs.shape[0])

    def settings(self) -> dict:
        """Describe how the loss is evaluated (recorded in every result)."""
        return {
            "bn_mode": self.bn_mode,
            "num_samples": self.num_samples,
            "chunk_size": self.chunk_size,
            "loss_fn": getattr(self.loss_fn, "__name__", str(self.loss_fn)),
        }

    def base_point(self) -> Tensor:
        """Return the model's current trainable parameters as a flat vector (a copy)."""
        return flatten_params(self.model)

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into named parameter views (no copy)."""
        return {
            n: t.view(s)
            for n, t, s in zip(self.names, torch.split(x, self.numels), self.shapes, strict=True)
        }

    def chunks(self, first: int = 0) -> Iterator[tuple[Tensor, Tensor, float]]:
        """Yield ``(inputs, targets, weight)`` per chunk; the weights ``n_c / N`` sum to 1.

        Args:
            first: Index of the first chunk to yield (the earlier ones are skipped).
        """
        n = self.num_samples
        for start in range(first * self.chunk_size, n, self.chunk_size):
            xb = self.inputs[start : start + self.chunk_size].to(self.device, non_blocking=True)
            yb = self.targets[start : start + self.chunk_size].to(self.device, non_blocking=True)
            yield xb, yb, xb.shape[0] / n

    def _chunk_loss(self, params: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return self.loss_fn(functional_call(self.model, params, (xb,)), yb)

    def __call__(self, x: Tensor) -> Tensor:
        """Return ``f(x)`` as a differentiable 0-dim tensor (the whole graph is kept)."""
        params = self.unflatten(x)
        with bn_mode(self.model, self.bn_mode):
            total = sum(w * self._chunk_loss(params, xb, yb) for xb, yb, w in self.chunks())
        return total  # type: ignore[return-value]

    def _loss(self, x: Tensor) -> Tensor:
        params = self.unflatten(x)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with bn_mode(self.model, self.bn_mode):
            for xb, yb, w in self.chunks():
                total += w * self._chunk_loss(params, xb, yb).double()
        return total.to(self.dtype)

    def _loss_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xr = x.clone().requires_grad_(True)
        params = self.unflatten(xr)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        grad = torch.zeros_like(x)
        with bn_mode(self.model, self.bn_mode), torch.enable_grad():
            for xb, yb, w in self.chunks():
                value = self._chunk_loss(params, xb, yb)
                (g,) = torch.autograd.grad(value * w, xr)
                grad += g
                total += w * value.detach().double()
        return total.to(self.dtype), grad

    def hvp_at(self, x: Tensor, *, max_graph_bytes: int | None = None) -> GraphHVP:
        """Return ``v -> H(x) v`` with the gradient's graph at ``x`` kept (see :class:`GraphHVP`).

        Args:
            x: The point, shape ``(n,)`` (copied).
            max_graph_bytes: Memory the kept graph may take (None: half the free GPU memory,
                or a quarter of the available RAM); chunks beyond it are recomputed.
        """
        return GraphHVP(self, x, max_graph_bytes=max_graph_bytes)

    def _hvp(self, x: Tensor, v: Tensor, first_chunk: int = 0) -> Tensor:
        xr = x.clone().requires_grad_(True)
        params = self.unflatten(xr)
        out = torch.zeros_like(x)
        v = v.to(x.dtype)
        with bn_mode(self.model, self.bn_mode), torch.enable_grad():
            for xb, yb, w in self.chunks(first_chunk):
                (g,) = torch.autograd.grad(self._chunk_loss(params, xb, yb), xr, create_graph=True)
                (hv,) = torch.autograd.grad(g, xr, grad_outputs=v)
                out += w * hv
        return out

    @torch.no_grad()
    def loss_and_accuracy(self, x: Tensor) -> tuple[float, float]:
        """Return the mean loss and the accuracy in percent at ``x`` (counted as a loss).

        Accuracy is meaningful only for classification with integer targets.
        """
        self.counters.num_loss += 1
        params = self.unflatten(x.detach())
        total, correct = 0.0, 0
        with bn_mode(self.model, self.bn_mode):
            for xb, yb, w in self.chunks():
                logits = functional_call(self.model, params, (xb,))
                total += w * float(self.loss_fn(logits, yb))
                correct += int((logits.argmax(dim=1) == yb).sum())
        return total, 100.0 * correct / self.num_samples


def is_finite(value: Tensor | float) -> bool:
    """Return whether a scalar is finite."""
    return math.isfinite(float(value))
