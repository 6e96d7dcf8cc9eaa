"""Symmetric linear operators: the Hessian, the Gauss-Newton matrix and their diagonal blocks.

Every curvature algorithm in :mod:`sharpminima.landscape` (Lanczos, power iteration,
Hutchinson, stochastic Lanczos quadrature) is a plain function of ``A: Tensor | Operator``.
An :class:`Operator` is an ``n x n`` symmetric matrix known only through products: it exposes
``.shape``, ``.dtype``, ``.device``, ``A @ v`` for a vector ``(n,)`` or a block ``(n, k)``
(the Hessian pushes a block through one batched pass of its kept graph, others go column by
column), a running ``num_matvecs`` count, and :meth:`Operator.to_scipy` (a
:class:`scipy.sparse.linalg.LinearOperator` with float64 numpy input and output), in the
manner of curvlinops. A dense square tensor becomes an operator through :func:`as_operator`,
so the same algorithms run on known-spectrum matrices in tests.

Operators built on an :class:`~sharpminima.landscape.objective.Objective` keep a reference
to it (``.objective``) so that results can report the objective's counted evaluations.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from sharpminima.errors import ConfigError
from sharpminima.landscape.graph_hvp import ForwardHVP, ForwardModeUnavailable, check_forward_mode
from sharpminima.landscape.objective import (
    LossFn,
    NetworkObjective,
    Objective,
    as_objective,
    require_network,
)
from sharpminima.landscape.results import Cost, CostMeter

log = logging.getLogger(__name__)

HVPMode = Literal["auto", "graph", "forward"]
HVP_MODES = ("auto", "graph", "forward")

#: Paths chosen by probes, per (model structure, loss, BatchNorm mode, batches, dimension,
#: dtype, device), for the life of the process (:class:`HessianOperator` with
#: ``hvp_mode="auto"``); read and written under :data:`_PROBED_LOCK`.
_PROBED: dict[tuple[Any, ...], str] = {}
_PROBED_LOCK = threading.Lock()
#: Timed products per path in a probe (the best is kept: the first pays one-off costs).
_PROBE_ROUNDS = 2
#: What a forward-over-reverse product raises for a model it cannot differentiate.
_FORWARD_ERRORS = (RuntimeError, NotImplementedError, ForwardModeUnavailable)


def _cached_path(key: tuple[Any, ...]) -> str | None:
    with _PROBED_LOCK:
        return _PROBED.get(key)


def _remember_path(key: tuple[Any, ...], path: str) -> None:
    with _PROBED_LOCK:
        _PROBED[key] = path


class Operator:
    """A symmetric ``n x n`` matrix accessed through matrix-vector products.

    Subclasses set ``shape``, ``dtype``, ``device`` (and ``objective`` where there is one)
    and implement :meth:`_matvec` for a single vector of the operator's dtype and device.

    Attributes:
        shape: ``(n, n)``.
        dtype: Floating dtype of the products.
        device: Device of the products.
        objective: The objective whose evaluations the products spend, or ``None``.
        num_matvecs: Number of matrix-vector products computed so far (a matrix ``(n, k)``
            counts ``k``).

    """

    kind = "operator"
    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    objective: Objective | None = None

    def __init__(self) -> None:
        self.num_matvecs = 0

    def _matvec(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def __matmul__(self, v: Tensor) -> Tensor:
        """Return ``A @ v`` for ``v`` of shape ``(n,)`` or ``(n, k)``, in the operator's dtype.

        Raises:
            ConfigError: If ``v`` is not a tensor with leading dimension ``n`` and 1 or 2 dims.

        """
        n = self.shape[0]
        if not isinstance(v, Tensor) or v.ndim not in (1, 2) or v.shape[0] != n:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ConfigError(f"operator of shape {self.shape} cannot multiply {got}")
        v = v.to(dtype=self.dtype, device=self.device)
        if v.ndim == 2:
            self.num_matvecs += int(v.shape[1])
            return self._matmat(v)
        self.num_matvecs += 1
        return self._matvec(v)

    def _matmat(self, V: Tensor) -> Tensor:
        """``A @ V`` for a block ``(n, k)``; column by column unless a subclass batches."""
        return torch.stack([self._matvec(V[:, j]) for j in range(V.shape[1])], dim=1)

    def settings(self) -> dict[str, Any]:
        """Describe the operator (its kind and the objective's settings, if any)."""
        out: dict[str, Any] = {"operator": self.kind, "dim": self.shape[0]}
        settings = getattr(self.objective, "settings", None)
        if callable(settings):
            out.update(settings())
        return out

    def to_scipy(self) -> LinearOperator:
        """Return a float64 :class:`scipy.sparse.linalg.LinearOperator` view (symmetric).

        Inputs are cast to the operator's dtype and device, outputs back to float64 numpy, so
        a float32 operator is symmetric only to float32 round-off.
        """

        def matvec(v: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))
            return (self @ t).detach().to("cpu", torch.float64).numpy()

        def matmat(v: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
            return (self @ t).detach().to("cpu", torch.float64).numpy()

        return LinearOperator(
            self.shape, matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=np.float64
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class DenseOperator(Operator):
    """A dense symmetric matrix as an :class:`Operator` (for tests and small problems).

    Args:
        matrix: Square tensor ``(n, n)``, assumed symmetric (not checked).

    Raises:
        ConfigError: If ``matrix`` is not a square 2-D floating tensor.

    """

    kind = "dense"

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
            raise ConfigError(
                f"a dense operator needs a non-empty square matrix, got shape "
                f"{tuple(matrix.shape)}"
            )
        if not matrix.is_floating_point():
            raise ConfigError(f"a dense operator needs a floating matrix, got {matrix.dtype}")
        self.matrix = matrix.detach()
        n = int(matrix.shape[0])
        self.shape = (n, n)
        self.dtype = matrix.dtype
        self.device = matrix.device

    def _matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def _matmat(self, V: Tensor) -> Tensor:
        return self.matrix @ V


class HessianOperator(Operator):
    """The Hessian ``H = grad^2 f(x)`` of an objective at a fixed point ``x``.

    Each product is one counted Hessian-vector product, computed along one of two paths:

    * ``"graph"`` (reverse-over-reverse): with ``keep_graph=True`` the gradient's graph at
      ``x`` is built on the first product (counted as one gradient evaluation) and kept, so
      every product is one reverse pass through it instead of a forward, a backward and that
      reverse pass (:meth:`Objective.hvp_at`,
      :class:`~sharpminima.landscape.graph_hvp.GraphHVP`): about 2/3 of the cost of plain
      double backpropagation, for memory that stays within ``max_graph_bytes``.
    * ``"forward"`` (forward-over-reverse): a ``torch.func.jvp`` of the gradient function
      per batch (:class:`~sharpminima.landscape.graph_hvp.ForwardHVP`); it keeps no graph.
      A block ``(n, k)`` is one ``vmap`` over the ``k`` tangents (column by column where
      ``vmap`` fails). A model ``torch.func`` cannot differentiate this way (e.g. a custom
      ``autograd.Function`` without ``setup_context``) raises a one-line
      :class:`~sharpminima.landscape.graph_hvp.ForwardModeUnavailable`; a sharded objective
      (its loss is all-reduced across ranks) is refused at construction.
    * ``"auto"`` (the default): on an accelerator (CUDA, MPS) the first product is
      computed both ways, after the graph is built, twice per path (the first of each pays
      one-off costs; the best time of each is compared), and the faster path is kept for
      the operator's life (the graph is released if forward-over-reverse wins). The probe's
      three extra products are counted in the objective's counters (three HVPs more than
      ``num_matvecs``) and their seconds are recorded in :meth:`settings` as
      ``hvp_probe``; the returned product is one of them. A decision is cached per process
      for each model structure (module names and types, parameter names and shapes),
      BatchNorm mode, loss, batch count, sample count, first-batch shapes, dimension, dtype
      and device, so later operators on the same setting do not probe again; if
      forward-over-reverse then fails on a model the cache sent there, the operator falls
      back to the kept graph and the cached decision is rewritten. On CPU ``"auto"`` is the
      kept graph without a probe: on a 2-core CPU forward-over-reverse was 1.9-3.6x slower
      on every model measured (an MLP, a small ResNet, a small GPT-style model). Only
      network objectives (``hvp_forward``) are probed; a plain function or a sharded
      objective keeps the graph, and so does a model with an operation that has no
      forward-mode derivative (found by the probe). A graph beyond the memory budget is not
      a reason to switch: its recomputed batches are in the probe's timing.

    For a :class:`ModelObjective` the Hessian is that of the mean loss over its ``N``
    samples, in its BatchNorm mode. The path used is recorded in :meth:`settings` as
    ``hvp_mode``: ``"graph"``, ``"forward"``, ``"recompute"`` (``keep_graph=False``) or
    ``"auto"`` while a probe has yet to decide.

    Args:
        loss: A callable of the flat parameter vector, or an :class:`Objective`.
        x: The point, shape ``(n,)`` (copied, so later changes to ``x`` do not move it).
        keep_graph: Keep the gradient's graph between products (False: recompute each
            graph-path product by double backpropagation, using no memory between products;
            ``"auto"`` then does not probe).
        max_graph_bytes: Memory the kept graph may take (None: the objective's default).
        hvp_mode: ``"auto"``, ``"graph"`` or ``"forward"`` (see above).
        probe: Whether ``"auto"`` decides by a probe: ``None`` on accelerators only, ``True``
            on any device (a cached decision is still reused), ``False`` never (the graph).

    Attributes:
        probe_seconds: Best seconds of the probe's products along each path, or ``None``
            when no probe timed both (none ran, a cached decision was taken, or forward mode
            failed).

    Raises:
        ConfigError: If ``x`` is not a 1-D floating tensor matching the objective, or
            ``hvp_mode`` is unknown.
        ForwardModeUnavailable: With ``hvp_mode="forward"``, for a network objective
            without per-batch forward products (a sharded objective); at a product, for a
            model ``torch.func`` cannot differentiate forward-over-reverse.

    """

    kind = "hessian"

    def __init__(
        self,
        loss: LossFn | Objective,
        x: Tensor,
        *,
        keep_graph: bool = True,
        max_graph_bytes: int | None = None,
        hvp_mode: HVPMode = "auto",
        probe: bool | None = None,
    ) -> None:
        super().__init__()
        if hvp_mode not in HVP_MODES:
            raise ConfigError(f"hvp_mode must be one of {HVP_MODES}, got {hvp_mode!r}")
        self.objective = as_objective(loss, x)
        if hvp_mode == "forward":
            check_forward_mode(self.objective)
        self.x = x.detach().clone()
        n = int(x.numel())
        self.shape = (n, n)
        self.dtype = x.dtype
        self.device = x.device
        self.keep_graph = keep_graph
        self.max_graph_bytes = max_graph_bytes
        self.hvp_mode = hvp_mode
        self.probe = probe
        self.probe_seconds: dict[str, float] | None = None
        self._path: str | None = self._initial_path()
        self._products: Callable[[Tensor], Tensor] | None = None
        self._key: tuple[Any, ...] | None = None

    def _initial_path(self) -> str | None:
        """The path known without a probe (``None``: the first product looks it up or probes)."""
        if self.hvp_mode == "forward":
            return "forward"
        if not self.keep_graph:
            return "recompute"
        if self.hvp_mode == "graph":
            return "graph"
        probing = self.device.type in ("cuda", "mps") if self.probe is None else self.probe
        # only a network objective's per-batch forward path is probed: a plain function, or
        # an objective whose evaluation communicates (sharded), keeps the graph
        forward = all(callable(getattr(self.objective, a, None)) for a in ("hvp_forward", "fingerprint"))
        return None if probing and forward else "graph"

    def settings(self) -> dict[str, Any]:
        """Describe the operator, the product path it uses and the objective's settings."""
        out = super().settings()
        out["hvp_mode"] = self._path or "auto"
        if self.probe_seconds is not None:  # the probe's extra products are in the costs
            out["hvp_probe"] = dict(self.probe_seconds)
        return out

    def release(self) -> None:
        """Free the kept graph, if any (a later product builds it again)."""
        release = getattr(self._products, "release", None)
        if callable(release):
            release()
        self._products = None

    def _probe_key(self) -> tuple[Any, ...]:
        if self._key is None:  # once per operator (the objective memoises its fingerprint)
            self._key = _probe_key(self.objective, self.x)
        return self._key

    def _graph(self) -> Callable[[Tensor], Tensor]:
        assert self.objective is not None
        if self._products is None:  # built lazily: the constructor does no work
            self._products = self.objective.hvp_at(self.x, max_graph_bytes=self.max_graph_bytes)
        return self._products

    def _forward(self) -> Callable[[Tensor], Tensor]:
        if self._products is None:
            self._products = ForwardHVP(self.objective, self.x)
        return self._products

    def _probe(self, v: Tensor) -> Tensor | None:
        """Take a cached decision (``None``), or compute ``H v`` both ways and keep the faster."""
        key = self._probe_key()
        cached = _cached_path(key)
        if cached is not None:
            self._path = cached
            return None
        graph = self._graph()
        build = getattr(graph, "build", None)
        if callable(build):
            build()  # the graph's one-off cost is not the product's
        forward = ForwardHVP(self.objective, self.x)
        seconds = {"graph": math.inf, "forward": math.inf}
        for _ in range(_PROBE_ROUNDS):  # the best of each: first calls pay one-off costs
            _synchronize(self.device)
            t0 = time.perf_counter()
            hv_graph = graph(v)
            _synchronize(self.device)
            t1 = time.perf_counter()
            try:
                hv_forward = forward(v)
            except _FORWARD_ERRORS as exc:  # an operation without forward mode
                log.info("forward-over-reverse products unavailable (%s); the kept graph is used", exc)
                self._path = "graph"
                _remember_path(key, "graph")
                return hv_graph
            _synchronize(self.device)
            t2 = time.perf_counter()
            seconds = {"graph": min(seconds["graph"], t1 - t0), "forward": min(seconds["forward"], t2 - t1)}
        self.probe_seconds = seconds
        self._path = "forward" if seconds["forward"] < seconds["graph"] else "graph"
        _remember_path(key, self._path)
        log.info(
            "Hessian-vector products: %s (probe, best of %d: kept graph %.3g s, "
            "forward-over-reverse %.3g s)",
            self._path, _PROBE_ROUNDS, seconds["graph"], seconds["forward"],
        )
        if self._path == "forward":
            release = getattr(graph, "release", None)
            if callable(release):
                release()  # the kept graph's tensors go now, not when the last reference does
            self._products = forward
            return hv_forward
        return hv_graph

    def _fall_back(self, exc: BaseException) -> None:
        """Leave a cached forward decision this model cannot follow: the kept graph, recorded."""
        log.warning(
            "forward-over-reverse products failed on a model the cached decision sent there "
            "(%s); the kept graph is used and the decision rewritten", exc,
        )
        self._products = None
        self._path = "graph"
        _remember_path(self._probe_key(), "graph")

    def _matvec(self, v: Tensor) -> Tensor:
        assert self.objective is not None
        if self._path is None:
            hv = self._probe(v)
            if hv is not None:
                return hv
        if self._path == "recompute":
            return self.objective.hvp(self.x, v)
        if self._path == "forward":
            try:
                return self._forward()(v)
            except _FORWARD_ERRORS as exc:
                if self.hvp_mode != "auto":
                    raise
                self._fall_back(exc)
        return self._graph()(v)

    def _matmat(self, V: Tensor) -> Tensor:
        first = self._probe(V[:, 0]) if self._path is None else None
        if first is not None:  # the first column decided; the rest go the chosen way
            if V.shape[1] == 1:
                return first[:, None]
            return torch.cat([first[:, None], self._matmat(V[:, 1:])], dim=1)
        if self._path == "recompute":
            return super()._matmat(V)
        if self._path == "forward":
            try:
                return self._forward().matmat(V)  # type: ignore[attr-defined]
            except _FORWARD_ERRORS as exc:
                if self.hvp_mode != "auto":
                    raise
                self._fall_back(exc)
        products = self._graph()
        matmat = getattr(products, "matmat", None)
        if matmat is None:  # a plain function's graph: column by column
            return super()._matmat(V)
        return matmat(V)


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing on an accelerator needs it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _probe_key(objective: Any, x: Tensor) -> tuple[Any, ...]:
    """What a probe's decision holds for: the objective's ``fingerprint()`` and ``x``.

    The fingerprint (modules, parameters, BatchNorm mode, loss, batches; see
    :meth:`ModelObjective.fingerprint`) is what every probed objective offers: only those
    with ``hvp_forward`` and ``fingerprint`` are probed (:meth:`HessianOperator._initial_path`).
    """
    return (*objective.fingerprint(), int(x.numel()), str(x.dtype), str(x.device))


class GGNOperator(Operator):
    """The generalized Gauss-Newton matrix of a network objective's mean loss.

    ``G = sum_b w_b J_b^T H_b J_b``, where for each fixed batch ``b`` of weight ``w_b``
    ``J_b`` is the Jacobian of the batch's outputs (logits, predictions) with respect to the
    flat parameters and ``H_b`` the Hessian of the batch's mean loss with respect to those
    outputs: for cross-entropy ``H_b = (1 / m_b) blockdiag_i(diag(p_i) - p_i p_i^T)`` over the
    batch's ``m_b`` samples (or counted tokens; ``p_i`` = softmax of row ``i``), for MSE
    ``2 I / numel``. ``G`` is positive semidefinite, weighted like the loss and drops the
    second-order term of the network from the Hessian (Schraudolph 2002; Martens 2020). In
    ``"batch"`` BatchNorm mode a batch's outputs depend jointly on all its samples, and
    ``J_b`` is that joint Jacobian.

    Each product costs per batch one forward-mode JVP and one reverse-mode VJP through the
    network (``torch.func``); the objective's counters are not touched (a GGN product is not
    a Hessian-vector product), so results report these products as ``num_matvecs``.

    Args:
        objective: A network objective (``ggn_vp``) whose loss has a Gauss-Newton form
            (cross-entropy, per-token cross-entropy, MSE).
        x: The point, shape ``(n,)``.

    Raises:
        ConfigError: If ``objective`` is not a network objective, its loss has no
            Gauss-Newton form, or ``x`` does not match it.

    """

    kind = "ggn"

    def __init__(self, objective: NetworkObjective, x: Tensor) -> None:
        super().__init__()
        obj = require_network(objective, "the Gauss-Newton operator")
        check = getattr(obj, "check_ggn", None)
        if callable(check):
            check()
        self.objective = as_objective(obj, x)
        self.x = x.detach().clone()
        n = int(x.numel())
        self.shape = (n, n)
        self.dtype = x.dtype
        self.device = x.device

    def _matvec(self, v: Tensor) -> Tensor:
        return self.objective.ggn_vp(self.x, v)  # type: ignore[union-attr]


class BlockOperator(Operator):
    """The diagonal block ``A[idx, idx]`` of an operator, e.g. one layer's Hessian.

    A product embeds ``v`` into zeros at ``idx``, multiplies by the full operator and
    keeps the entries at ``idx``, so each block product costs one full product of ``A``.

    Args:
        operator: The full operator (or a dense square tensor).
        indices: 1-D integer tensor of distinct indices into ``range(n)``, or a ``slice``.
        name: Label of the block (e.g. the layer name), recorded in :meth:`settings`.

    Raises:
        ConfigError: If ``indices`` are empty, not integers, repeated or out of range.

    """

    kind = "block"

    def __init__(
        self, operator: Tensor | Operator, indices: Tensor | slice, name: str = ""
    ) -> None:
        super().__init__()
        self.base = as_operator(operator)
        n = self.base.shape[0]
        if isinstance(indices, slice):
            indices = torch.arange(n)[indices]
        if not isinstance(indices, Tensor) or indices.ndim != 1 or indices.is_floating_point():
            raise ConfigError("block indices must be a 1-D integer tensor or a slice")
        if indices.numel() == 0:
            raise ConfigError("block indices are empty")
        if int(indices.min()) < 0 or int(indices.max()) >= n:
            raise ConfigError(f"block indices must lie in [0, {n}), got {int(indices.min())}"
                              f"..{int(indices.max())}")
        if torch.unique(indices).numel() != indices.numel():
            raise ConfigError("block indices must be distinct")
        self.indices = indices.to(device=self.base.device, dtype=torch.long)
        self.name = name
        m = int(indices.numel())
        self.shape = (m, m)
        self.dtype = self.base.dtype
        self.device = self.base.device
        self.objective = self.base.objective

    def settings(self) -> dict[str, Any]:
        """Describe the block and the operator it is cut from."""
        out = self.base.settings()
        out.update(
            operator=f"block of {out['operator']}",
            block=self.name,
            dim=self.shape[0],
            full_dim=self.base.shape[0],
        )
        return out

    def _matvec(self, v: Tensor) -> Tensor:
        full = torch.zeros(self.base.shape[0], dtype=self.dtype, device=self.device)
        full[self.indices] = v
        return (self.base @ full)[self.indices]

    def _matmat(self, V: Tensor) -> Tensor:
        full = torch.zeros(self.base.shape[0], V.shape[1], dtype=self.dtype, device=self.device)
        full[self.indices] = V
        return (self.base @ full)[self.indices]


def as_operator(matrix: Tensor | Operator) -> Operator:
    """Return ``matrix`` itself if it is an :class:`Operator`, else wrap a dense tensor.

    Args:
        matrix: An operator or a square floating tensor ``(n, n)``.

    Raises:
        ConfigError: If ``matrix`` is neither.

    """
    if isinstance(matrix, Operator):
        return matrix
    if isinstance(matrix, Tensor):
        return DenseOperator(matrix)
    raise ConfigError(
        f"expected a square tensor or an Operator, got {type(matrix).__name__}"
    )


def parameter_groups(objective: Objective, by: str = "module") -> dict[str, Tensor]:
    """Group a network's flat parameter indices by the module (or tensor) that owns them.

    With ``by="module"`` a parameter named ``"net.3.weight"`` belongs to group ``"net.3"``
    (its name without the last component), so a layer's weight and bias form one block; a
    parameter registered directly on the root module is its own group (``"weight"``);
    BatchNorm layers are their own groups (``"net.2"`` with its weight and bias). With
    ``by="parameter"`` every parameter tensor is a group under its full name. Groups are
    listed in the order of ``model.named_parameters()``; only trainable parameters are in
    ``x``.

    Args:
        objective: A network objective (it knows the parameter names and sizes).
        by: ``"module"`` or ``"parameter"``.

    Returns:
        Group name -> 1-D long tensor of indices into the flat vector ``x``.

    Raises:
        ConfigError: If ``objective`` is not a network objective or ``by`` is unknown.

    """
    if not isinstance(objective, NetworkObjective):
        raise ConfigError(
            "parameter groups need a network objective (it knows the parameter names); for "
            f"another objective pass groups explicitly, got {type(objective).__name__}"
        )
    if by not in ("module", "parameter"):
        raise ConfigError(f"parameters are grouped by 'module' or 'parameter', got {by!r}")
    ranges: dict[str, list[Tensor]] = {}
    start = 0
    for name, numel in zip(objective.names, objective.numels, strict=True):
        group = name.rsplit(".", 1)[0] if by == "module" and "." in name else name
        ranges.setdefault(group, []).append(torch.arange(start, start + numel))
        start += numel
    return {group: torch.cat(parts) for group, parts in ranges.items()}


class OperatorMeter:
    """Measure the products, evaluations and seconds an algorithm spends on an operator.

    Example:
        >>> with OperatorMeter(op) as meter:
        ...     ...
        >>> meter.num_matvecs, meter.cost

    """

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.cost = Cost()
        self.num_matvecs = 0

    def __enter__(self) -> OperatorMeter:
        self._start = self.operator.num_matvecs
        obj = self.operator.objective
        self._meter = CostMeter(obj).__enter__() if obj is not None else None
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.num_matvecs = self.operator.num_matvecs - self._start
        if self._meter is not None:
            self.cost = self._meter.current()
        else:
            self.cost = Cost(seconds=time.perf_counter() - self._t0)


def resolve_operator(
    loss: LossFn | Objective, x: Tensor, operator: Tensor | Operator | None = None
) -> Operator:
    """Return the operator a measure works on: ``operator`` if given, else the Hessian.

    Args:
        loss: A callable of the flat parameter vector, or an :class:`Objective`.
        x: The point, shape ``(n,)``.
        operator: ``None`` for :class:`HessianOperator` ``(loss, x)``, or any operator (a
            :class:`GGNOperator`, a dense matrix) of shape ``(n, n)``; ``loss`` is then unused.

    Raises:
        ConfigError: If ``x`` is not a 1-D floating tensor, or ``operator`` is not ``n x n``.

    """
    if operator is None:
        return HessianOperator(loss, x)
    op = as_operator(operator)
    if x.ndim != 1 or op.shape[0] != x.numel():
        raise ConfigError(
            f"operator of shape {op.shape} does not match the parameter vector of shape "
            f"{tuple(x.shape)}"
        )
    return op
