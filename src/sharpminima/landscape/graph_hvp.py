"""Hessian-vector products at one point from a first-order graph kept in memory.

``H(x) v`` is the vector-Jacobian product of ``g(x) = grad f(x)`` with ``v`` (``H`` is
symmetric). Double backpropagation builds ``g``'s graph (a forward and a backward pass) and
then differentiates it; at a fixed ``x`` that graph is the same for every ``v``, so
:class:`GraphHVP` builds it once, on the first product, and each product is then a single
reverse pass through it (about 6 instead of 9 matrix products per dense layer).

:class:`ForwardHVP` computes the same product by forward-over-reverse: ``H(x) v`` is the
directional derivative of ``g`` along ``v``, a ``torch.func.jvp`` of ``torch.func.grad``.
It keeps nothing between products. On a 2-core CPU it measured 3.6 gradients per product on
an MLP (F1) and 5.7 on a small GPT-style model, against 1.9 and 1.6 from the kept graph;
:class:`~sharpminima.landscape.operators.HessianOperator` picks between the two.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor

from sharpminima.errors import ConfigError

log = logging.getLogger(__name__)


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
    """Hessian-vector products at a fixed point from a kept first-order graph.

    Building the graph is counted as one gradient evaluation, each product as one HVP.

    An objective whose loss is a weighted sum over batches (a network objective) offers
    ``gradient_parts(xr)``, yielding each batch's weighted gradient with its graph, and
    ``hvp_from(x, v, first)``, the plain products of batch ``first`` on. The graph is
    then built batch by batch while the tensors it saves fit in ``max_graph_bytes``;
    batches past that budget are recomputed at every product by plain double
    backpropagation, so memory never exceeds the budget by more than one batch's graph. The
    value equals :meth:`~sharpminima.landscape.objective.Objective.hvp` to float round-off.
    An objective without ``gradient_parts`` (a plain function) keeps its whole graph.

    Memory is counted as the graph is built: on CUDA as the growth of allocated device
    memory per batch; elsewhere as the bytes of the distinct storages the graph saves,
    leaving out the parameter vector, the data the objective holds anyway
    (``held_tensors()``) and the model's tensors. The graph holds the model's buffers as
    they were (running statistics in ``"eval"`` mode): changing them in place while
    products are still wanted makes the next product fail; call :meth:`release` first.

    Args:
        objective: The objective (its counters are advanced).
        x: The point, shape ``(n,)`` (copied).
        max_graph_bytes: Budget for the kept graph (``None``: :func:`default_graph_budget`;
            unbounded for a plain function).

    Attributes:
        cached_chunks: Batches whose graph is kept (``None`` before the first product; a
            plain function counts as one).
        num_chunks: Batches of the objective (1 for a plain function).
        graph_bytes: Bytes of the tensors the kept graph saves (counted as they are saved).

    Raises:
        ConfigError: For a negative budget.
    """

    def __init__(self, objective: Any, x: Tensor, *, max_graph_bytes: int | None = None) -> None:
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
        #: Columns per batched reverse pass in :meth:`matmat`.
        self.block_size = 8
        #: Whether blocks go through one batched pass: on accelerators (wider matrix products
        #: fill the device); not on CPU, where the products are already GEMM-bound and a
        #: batched pass measured 2.26 gradients per column on F1 against 1.91 one at a time.
        #: Set to False after ``vmap`` failed once.
        self.batched = self.x.device.type != "cpu"

    def build(self) -> None:
        """Build the kept graph now, if it is not built (otherwise the first product does)."""
        if self.cached_chunks is None:
            self._build()

    def release(self) -> None:
        """Free the kept graph (the next product builds it again)."""
        self._xr = self._grad = None
        self.cached_chunks = None

    def __call__(self, v: Tensor) -> Tensor:
        """Return ``H(x) v``, shape ``(n,)``, detached (one counted HVP)."""
        if self.cached_chunks is None:
            self._build()
        assert self.cached_chunks is not None
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
        if self.cached_chunks < self.num_chunks:
            out += self.objective.hvp_from(self.x, v, self.cached_chunks)
        return out

    def matmat(self, V: Tensor) -> Tensor:
        """Return ``H(x) V`` for a block ``V`` of shape ``(n, k)`` (``k`` counted HVPs).

        On an accelerator the kept graph is differentiated once per block of ``block_size``
        columns with ``torch.autograd.grad(..., is_grads_batched=True)`` (a ``vmap`` over the
        reverse pass): the same matrix products, done as wider ones. On CPU, and for a graph
        whose operations ``vmap`` cannot batch (logged once), one column at a time
        (:attr:`batched`).
        """
        if self.cached_chunks is None:
            self._build()
        assert self.cached_chunks is not None
        k = int(V.shape[1])
        self.objective.counters.num_hvp += k
        V = V.detach().to(dtype=self.x.dtype, device=self.x.device)
        out = torch.zeros(self.x.shape[0], k, dtype=self.x.dtype, device=self.x.device)
        if self._grad is not None and self._grad.requires_grad:
            for start in range(0, k, max(1, self.block_size)):
                cols = V[:, start : start + self.block_size]
                out[:, start : start + cols.shape[1]] += self._batched(cols)
        if self.cached_chunks < self.num_chunks:
            for j in range(k):
                out[:, j] += self.objective.hvp_from(self.x, V[:, j], self.cached_chunks)
        return out

    def _batched(self, cols: Tensor) -> Tensor:
        """``H_kept @ cols`` through the kept graph, batched where ``vmap`` allows."""
        assert self._grad is not None and self._xr is not None
        if self.batched and cols.shape[1] > 1:
            try:
                with torch.enable_grad():
                    (hv,) = torch.autograd.grad(
                        self._grad, self._xr, grad_outputs=cols.T.contiguous(), retain_graph=True,
                        allow_unused=True, is_grads_batched=True,
                    )
                return torch.zeros_like(cols) if hv is None else hv.T
            except RuntimeError as exc:  # an op without a batching rule
                log.info("batched Hessian-vector products unavailable (%s); one at a time", exc)
                self.batched = False
        out = torch.empty_like(cols)
        with torch.enable_grad():
            for j in range(cols.shape[1]):
                (hv,) = torch.autograd.grad(
                    self._grad, self._xr, grad_outputs=cols[:, j], retain_graph=True, allow_unused=True
                )
                out[:, j] = 0.0 if hv is None else hv
        return out

    def _build(self) -> None:
        obj = self.objective
        obj.counters.num_grad += 1
        xr = self.x.clone().requires_grad_(True)
        parts = getattr(obj, "gradient_parts", None)
        if parts is None:
            with torch.enable_grad():
                value = obj(xr)
                (grad,) = torch.autograd.grad(value, xr, create_graph=True)
            self._xr, self._grad, self.cached_chunks = xr, grad, 1
            return
        budget = default_graph_budget(obj.device) if self.max_graph_bytes is None else self.max_graph_bytes
        self.num_chunks = obj.num_chunks
        cuda = obj.device.type == "cuda"
        # storages that exist without the graph: x, the data the objective holds, the model
        existing = {xr.untyped_storage().data_ptr()}
        existing |= {t.untyped_storage().data_ptr() for t in obj.held_tensors()}
        seen: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in existing:
                seen[ptr] = t.untyped_storage().nbytes()
            # detached: a saved output holding itself would make a cycle autograd never frees
            return t.detach()

        total: Tensor | None = None
        cached = 0
        used = 0
        pieces = parts(xr)
        try:
            while True:
                seen.clear()
                start = torch.cuda.memory_allocated(obj.device) if cuda else 0
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    g = next(pieces, None)  # this batch's weighted gradient, with its graph
                if g is None:
                    break
                grown = torch.cuda.memory_allocated(obj.device) - start if cuda else sum(seen.values())
                if used + grown > budget:
                    break  # this batch's graph is dropped with g; it and the rest are recomputed
                total = g if total is None else total + g
                used += grown
                cached += 1
        finally:
            pieces.close()
        self._xr, self._grad, self.cached_chunks, self.graph_bytes = xr, total, cached, used
        if cached < self.num_chunks:
            log.info(
                "HVP graph: %d of %d chunks kept (%.2f GB budget); the rest are recomputed per product",
                cached, self.num_chunks, budget / 1e9,
            )


class ForwardModeUnavailable(ConfigError):
    """Forward-over-reverse products cannot be computed for this model or objective.

    Raised for an operation without a forward-mode derivative or a ``torch.func`` rule
    (e.g. a custom :class:`torch.autograd.Function` without ``setup_context``), and for
    objectives whose evaluation communicates across ranks; the kept graph
    (``hvp_mode='graph'``) still works. ``hvp_mode='auto'`` falls back to it.
    """


def unavailable(reason: BaseException | str, what: str = "this model") -> ForwardModeUnavailable:
    """The one-line error for a model whose products have no forward-over-reverse path."""
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    if isinstance(reason, BaseException):
        text = f"{type(reason).__name__}: {text}"
    return ForwardModeUnavailable(
        f"forward-over-reverse Hessian-vector products are not available for {what} "
        f"({text[:200]}); use hvp_mode='graph'"
    )


def check_forward_mode(objective: Any) -> None:
    """Refuse objectives whose products cannot be taken by forward-over-reverse.

    A network objective (one with a ``model``) must offer the per-batch ``hvp_forward``;
    one that does not (the sharded :class:`~sharpminima.landscape.sharded.DistributedObjective`,
    whose loss is all-reduced across ranks) is refused rather than transformed as a whole.

    Raises:
        ForwardModeUnavailable: For a network objective without ``hvp_forward``.
    """
    if getattr(objective, "model", None) is not None and not callable(
        getattr(objective, "hvp_forward", None)
    ):
        raise unavailable(
            "it offers no per-batch hvp_forward; a sharded objective all-reduces across ranks",
            type(objective).__name__,
        )


class ForwardHVP:
    """Hessian-vector products at a fixed point by forward-over-reverse differentiation.

    ``H(x) v = d/dt grad f(x + t v)`` at ``t = 0``: a ``torch.func.jvp`` of the gradient
    function, which keeps no graph between products. A network objective offering
    ``hvp_forward(x, v)`` computes it batch by batch (``sum_b w_b H_b v``, in its BatchNorm
    mode); for any other objective it is ``jvp(grad(f))`` of the objective as a function of
    ``x``, which must then be written in ``torch`` operations that ``torch.func`` can
    transform. Each product is one counted HVP. The value equals :class:`GraphHVP`'s to
    float round-off.

    A block ``(n, k)`` (:meth:`matmat`) is one ``torch.func.vmap`` over the tangents, so
    each batch's forward pass is shared by the ``k`` columns; a model ``vmap`` cannot batch
    (logged once, :attr:`batched` then False) goes column by column.

    Args:
        objective: The objective (its counters are advanced).
        x: The point, shape ``(n,)`` (copied).

    Raises:
        ForwardModeUnavailable: For a network objective without ``hvp_forward`` (a sharded
            objective); see :func:`check_forward_mode`.
    """

    def __init__(self, objective: Any, x: Tensor) -> None:
        check_forward_mode(objective)
        self.objective = objective
        self.x = x.detach().clone()
        #: Whether :meth:`matmat` batches its columns with ``vmap`` (False after it failed).
        self.batched = True

    def _product(self, v: Tensor) -> Tensor:
        """``H(x) v`` for one column ``(n,)`` (also the function ``vmap`` batches)."""
        obj = self.objective
        per_batch = getattr(obj, "hvp_forward", None)
        if callable(per_batch):
            return per_batch(self.x, v)
        try:
            _, hv = torch.func.jvp(torch.func.grad(obj), (self.x,), (v,))
        except NotImplementedError:
            raise ConfigError(
                f"forward-over-reverse products need a differentiable objective function; "
                f"{type(obj).__name__} has none: use the kept graph (hvp_mode='graph')"
            ) from None
        except RuntimeError as exc:  # e.g. an autograd.Function torch.func cannot transform
            raise unavailable(exc, "this objective") from None
        return hv

    def __call__(self, v: Tensor) -> Tensor:
        """Return ``H(x) v``, shape ``(n,)``, detached (one counted HVP).

        Raises:
            ForwardModeUnavailable: If the model has no forward-over-reverse path.
        """
        v = v.detach().to(dtype=self.x.dtype, device=self.x.device)
        hv = self._product(v)
        self.objective.counters.num_hvp += 1  # counted once computed (a failed probe spends nothing)
        return hv.detach()

    def matmat(self, V: Tensor) -> Tensor:
        """Return ``H(x) V`` for a block ``V`` of shape ``(n, k)`` (``k`` counted HVPs).

        One ``torch.func.vmap`` of the product over the columns; column by column where that
        fails (logged once). Equal to the column loop to float round-off.
        """
        V = V.detach().to(dtype=self.x.dtype, device=self.x.device)
        if self.batched and V.shape[1] > 1:
            try:
                out = torch.func.vmap(self._product, in_dims=1, out_dims=1)(V)  # (n, k)
            except (RuntimeError, NotImplementedError, ConfigError) as exc:
                log.info("batched forward-over-reverse products unavailable (%s); one column at a time", exc)
                self.batched = False
            else:
                self.objective.counters.num_hvp += int(V.shape[1])
                return out.detach()
        return torch.stack([self(V[:, j]) for j in range(V.shape[1])], dim=1)
