"""A network's mean loss over a data source, as a function of its flat parameters.

``ModelObjective(model, data, ...)`` is the objective every landscape measure of a network
uses. ``data`` is anything :func:`~sharpminima.data.sources.as_source` reads (in-memory
tensors, a DataLoader, a list of batches, a pinned source) and the loss is a
:class:`~sharpminima.losses.Loss` adapter (cross-entropy, MSE, a model's own ``.loss``, or
a user function of ``(model, batch)``). The function is

``f(x) = sum_b (m_b / M) L_b(x)``,

the mean of the per-batch mean losses ``L_b`` weighted by each batch's count ``m_b`` (its
samples, or target tokens for a per-token loss; ``M = sum_b m_b``): the mean over every
sample (token) of a fixed, finite set, whatever the batching. In ``"eval"`` BatchNorm mode
that is exact; in ``"batch"`` mode the batches define the function, since BatchNorm
normalises each batch with its own statistics. The batches are the same on every
evaluation (the source guarantees it or says otherwise) and move to the model's device one
at a time.

The model is evaluated with :func:`torch.func.functional_call` at parameters built from
``x`` (on a small wrapper module, so a user loss that calls the model, or its submodules,
sees them); its own parameters and buffers are never modified. ``x`` holds the parameters
with ``requires_grad`` (frozen ones are left out), each shared (tied) tensor once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from sharpminima.data.sources import (
    Batch,
    DataSource,
    as_source,
    leading_size,
    select_rows,
    to_device,
    tree_map,
)
from sharpminima.errors import ConfigError, DataError
from sharpminima.landscape import batched as batched_eval
from sharpminima.landscape.objective import BNMode, CountedObjective, bn_mode, flatten_params
from sharpminima.losses import Loss, resolve_loss

log = logging.getLogger(__name__)


def second_order() -> contextlib.AbstractContextManager[None]:
    """Run attention through the plain math kernel, whose derivatives are all defined.

    The fused scaled-dot-product attention kernels (flash, memory-efficient; what Hugging
    Face models call by default) have no double-backward or forward-mode derivative on
    some devices, so Hessian-vector and Gauss-Newton products and per-example gradients
    use the math kernel (same function, other rounding). Networks without attention are
    unaffected.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class _Evaluation(nn.Module):
    """``criterion(model, batch)`` as a module, for ``functional_call`` at any parameters."""

    def __init__(self, model: nn.Module, criterion: Loss) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch: Batch, what: str = "loss") -> Any:
        criterion, model = self.criterion, self.model
        if what == "loss":
            return criterion(model, batch)
        if what == "metrics":
            return criterion.metrics(model, batch)
        if what == "outputs":
            return criterion.outputs(model, batch)
        return criterion.forward(model, batch)


class ModelObjective(CountedObjective):
    """Mean loss of a network over a fixed data source (see the module docstring).

    Args:
        model: The network. Only parameters with ``requires_grad`` are in ``x``.
        data: Input tensors (with ``targets``), a nested structure of tensors, a DataLoader,
            a list of batches or a :class:`~sharpminima.data.sources.DataSource`.
        targets: Targets of tensor ``data``.
        loss: The loss: ``None`` (cross-entropy for ``(inputs, targets)`` batches, the
            model's own ``.loss`` for dict batches), a name (``"cross_entropy"``, ``"mse"``,
            ``"output"``), a :class:`~sharpminima.losses.Loss`, or ``fn(model, batch)``.
        loss_fn: Older form: ``loss_fn(outputs, targets)`` (e.g. ``F.cross_entropy``).
        bn_mode: ``"batch"`` (statistics of each batch, Keskar et al.'s Keras behaviour) or
            ``"eval"`` (running statistics). Recorded in every result.
        chunk_size: Samples per forward pass of tensor data.
        max_batches: Use only the first batches of a loader.
        max_samples: Use only the first samples (the last batch cut).

    Raises:
        ConfigError: If the data are empty or mismatched, ``chunk_size`` < 1, the BN mode is
            unknown, the model has no trainable parameter, or the loss is not understood.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        targets: Tensor | None = None,
        *,
        loss: Any = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        bn_mode: BNMode = "batch",
        chunk_size: int = 1000,
        max_batches: int | None = None,
        max_samples: int | None = None,
    ) -> None:
        super().__init__()
        if bn_mode not in ("batch", "eval"):
            raise ConfigError(f"BatchNorm mode must be 'batch' or 'eval', got {bn_mode!r}")
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.source: DataSource = as_source(
            data, targets, chunk_size=chunk_size, max_batches=max_batches, max_samples=max_samples
        )
        self.model = model
        self.bn_mode: BNMode = bn_mode
        self.chunk_size = int(getattr(self.source, "chunk_size", chunk_size))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        first = named[0][1]
        self.dim = int(sum(self.numels))
        self.dtype = first.dtype
        self.device = first.device
        self._criterion: Loss | None = (
            resolve_loss(loss, loss_fn=loss_fn) if (loss is not None or loss_fn is not None) else None
        )
        self._wrapper: _Evaluation | None = None
        self._weights: list[float] | None = None
        self._sizes: list[int] | None = None
        self._validated = False
        self._first_shapes: tuple[tuple[int, ...], ...] = ()
        self._fingerprint: tuple[Any, ...] | None = None

    # -- the loss and the data ---------------------------------------------------------------
    @property
    def criterion(self) -> Loss:
        """The loss adapter (the default is picked from the first batch's type)."""
        if self._criterion is None:
            self._criterion = resolve_loss(None, example=self._first_batch())
        return self._criterion

    @property
    def loss_fn(self) -> Loss:
        """The loss adapter (the older name of :attr:`criterion`)."""
        return self.criterion

    @property
    def has_accuracy(self) -> bool:
        """Whether the loss counts correct predictions (classification, next token)."""
        return self.criterion.has_accuracy

    def _first_batch(self) -> Batch:
        for batch in self.source.batches():
            return batch
        raise DataError("the data source yielded no batch; give it at least one sample")

    def _evaluator(self) -> _Evaluation:
        if self._wrapper is None:
            self._wrapper = _Evaluation(self.model, self.criterion)
        return self._wrapper

    def _survey(self) -> None:
        """Count every batch's weight once (a pass over the data without the model)."""
        criterion = self.criterion
        counts: list[float] = []
        sizes: list[int] = []
        shapes: list[tuple[int, ...]] = []
        for batch in self.source.batches():
            if not sizes:  # the first batch's layout, for fingerprint()
                tree_map(lambda t: shapes.append(tuple(t.shape)), batch)
            counts.append(criterion.count(batch))
            sizes.append(leading_size(batch))
        self._first_shapes = tuple(shapes)
        total = sum(counts)
        if not total > 0:
            raise DataError("the data source holds nothing the loss averages over (no sample or token)")
        self._weights = [c / total for c in counts]
        self._sizes = sizes
        self._total = total

    @property
    def weights(self) -> list[float]:
        """Each batch's weight ``m_b / M`` (they sum to 1)."""
        if self._weights is None:
            self._survey()
        assert self._weights is not None
        return self._weights

    @property
    def num_samples(self) -> int:
        """Number of samples ``N`` the loss averages over."""
        known = getattr(self.source, "num_samples", None)
        if isinstance(known, int) and self._sizes is None:
            return known
        if self._sizes is None:
            self._survey()
        assert self._sizes is not None
        return int(sum(self._sizes))

    @property
    def total_weight(self) -> float:
        """``M``: samples, or tokens for a per-token loss."""
        if self._weights is None:
            self._survey()
        return self._total

    @property
    def num_chunks(self) -> int:
        """Number of batches."""
        return len(self.weights)

    @property
    def inputs(self) -> Tensor:
        """The inputs of an ``(inputs, targets)`` tensor source.

        Raises:
            AttributeError: For other sources (a loader has no single inputs tensor).
        """
        return self._pair()[0]

    @property
    def targets(self) -> Tensor:
        """The targets of an ``(inputs, targets)`` tensor source."""
        return self._pair()[1]

    def _pair(self) -> tuple[Tensor, Tensor]:
        tree = getattr(self.source, "tree", None)
        if isinstance(tree, tuple) and len(tree) == 2 and all(isinstance(t, Tensor) for t in tree):
            return tree
        raise AttributeError(f"a {self.source.kind} source has no single inputs and targets tensors")

    def held_tensors(self) -> list[Tensor]:
        """Tensors that exist without any evaluation: the held data and the model's state."""
        return [*self.source.held_tensors(), *self.model.state_dict().values()]

    def batches(self, first: int = 0) -> Iterator[tuple[Batch, float]]:
        """Yield ``(batch on the model's device, weight)`` from batch number ``first`` on.

        Raises:
            DataError: If the source yields more batches than on its first pass.
        """
        weights = self.weights
        chunks = getattr(self.source, "chunks", None)
        raw = chunks(first) if callable(chunks) else itertools.islice(self.source.batches(), first, None)
        for i, batch in enumerate(raw, start=first):
            if i >= len(weights):
                raise DataError(
                    "the data source gave more batches than on its first pass; its batches must be "
                    "the same on every pass: fix them with sharpminima.data.sources.pin_batches"
                )
            yield to_device(batch, self.device), weights[i]

    # -- parameters ------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Describe how the loss is evaluated (recorded in every result)."""
        out: dict[str, Any] = {
            "bn_mode": self.bn_mode,
            "num_samples": self.num_samples,
            "loss": self.criterion.spec(),
        }
        described = self.source.describe()
        described.pop("num_samples", None)
        out.update(described)
        if self.criterion.spec() not in ("cross_entropy", "mse") or self.total_weight != self.num_samples:
            out["total_weight"] = self.total_weight
        return out

    def base_point(self) -> Tensor:
        """Return the model's current trainable parameters as a flat vector (a copy)."""
        return flatten_params(self.model)

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into named parameter views (no copy)."""
        return {
            n: t.view(s) for n, t, s in zip(self.names, torch.split(x, self.numels), self.shapes, strict=True)
        }

    def _params(self, x: Tensor) -> dict[str, Tensor]:
        """``x`` as the evaluation wrapper's parameters (names under ``model.``)."""
        return {
            "model." + n: t.view(s)
            for n, t, s in zip(self.names, torch.split(x, self.numels), self.shapes, strict=True)
        }

    def parameter_layout(self) -> list[tuple[str, int]]:
        """``(name, numel)`` of each parameter tensor, in the order of ``x``."""
        return list(zip(self.names, self.numels, strict=True))

    # -- evaluations ----------------------------------------------------------------------------
    def _call(self, params: dict[str, Tensor], batch: Batch, what: str = "loss") -> Any:
        evaluator = self._evaluator()
        if self._validated:
            return functional_call(evaluator, params, (batch,), {"what": what})
        try:
            out = functional_call(evaluator, params, (batch,), {"what": what})
        except ConfigError:
            raise
        except (RuntimeError, TypeError, KeyError, ValueError, IndexError, AttributeError) as exc:
            hint = (
                " (keep every model tensor on one device; batches are moved to it)"
                if "device" in str(exc)
                else ""
            )
            raise ConfigError(
                f"evaluating the loss {self.criterion.spec()!r} on the first batch failed: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{hint}; check "
                "the batch layout ((inputs, targets) for cross_entropy and mse, model keyword "
                "arguments with labels for output) or pass loss=fn(model, batch)"
            ) from None
        value = out[0] if what == "metrics" else out
        if what in ("loss", "metrics"):
            self._validate(value)
        return out

    @torch.no_grad()
    def check(self, x: Tensor | None = None) -> float:
        """Evaluate the loss on the first batch only: a cheap test that data, model and loss fit.

        Returns:
            The first batch's mean loss.

        Raises:
            ConfigError: If the loss cannot read the batch, returns a non-scalar or a
                non-finite value.
            DataError: If the source yields no batch.
        """
        point = self.base_point() if x is None else x
        batch = to_device(self._first_batch(), self.device)
        with bn_mode(self.model, self.bn_mode):
            self._validated = False
            return float(self._batch_loss(self._params(point.detach()), batch))

    def _validate(self, value: Any) -> None:
        if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
            got = (
                f"shape {tuple(value.shape)}, {value.dtype}"
                if isinstance(value, Tensor)
                else type(value).__name__
            )
            raise ConfigError(
                f"the loss must return the batch's mean loss as a scalar floating tensor, got {got}"
            )
        if not bool(torch.isfinite(value.detach()).all()):
            raise ConfigError(
                f"the loss is {float(value)} on the first batch at the given weights; check the "
                "weights are finite (a diverged run?) and the loss function"
            )
        self._validated = True

    def _batch_loss(self, params: dict[str, Tensor], batch: Batch) -> Tensor:
        loss = self._call(params, batch)
        return loss.reshape(()) if loss.ndim else loss

    def __call__(self, x: Tensor) -> Tensor:
        """Return ``f(x)`` as a differentiable 0-dim tensor (the whole graph is kept)."""
        params = self._params(x)
        with bn_mode(self.model, self.bn_mode):
            total = sum(w * self._batch_loss(params, b) for b, w in self.batches())
        return total  # type: ignore[return-value]

    def _loss(self, x: Tensor) -> Tensor:
        params = self._params(x)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with bn_mode(self.model, self.bn_mode):
            for b, w in self.batches():
                total += w * self._batch_loss(params, b).double()
        return total.to(self.dtype)

    def _loss_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xr = x.clone().requires_grad_(True)
        params = self._params(xr)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        grad_sum = torch.zeros_like(x)
        with bn_mode(self.model, self.bn_mode), torch.enable_grad():
            for b, w in self.batches():
                value = self._batch_loss(params, b)
                (g,) = torch.autograd.grad(value * w, xr)
                grad_sum += g
                total += w * value.detach().double()
        return total.to(self.dtype), grad_sum

    def hvp_at(self, x: Tensor, *, max_graph_bytes: int | None = None) -> Callable[[Tensor], Tensor]:
        """Return ``v -> H(x) v`` with the gradient's graph at ``x`` kept.

        See :class:`~sharpminima.landscape.graph_hvp.GraphHVP`.

        Args:
            x: The point, shape ``(n,)`` (copied).
            max_graph_bytes: Memory the kept graph may take (None: half the free GPU memory,
                or a quarter of the available RAM); batches beyond it are recomputed.
        """
        from sharpminima.landscape.graph_hvp import GraphHVP

        return GraphHVP(self, x, max_graph_bytes=max_graph_bytes)

    def gradient_parts(self, xr: Tensor) -> Iterator[Tensor]:
        """Yield each batch's weighted gradient ``w_b grad L_b(xr)``, keeping its graph."""
        params = self._params(xr)
        with bn_mode(self.model, self.bn_mode), torch.enable_grad(), second_order():
            for b, w in self.batches():
                (g,) = torch.autograd.grad(self._batch_loss(params, b), xr, create_graph=True)
                yield w * g

    def hvp_from(self, x: Tensor, v: Tensor, first: int) -> Tensor:
        """``sum_{b >= first} w_b H_b v`` by plain double backpropagation."""
        xr = x.clone().requires_grad_(True)
        params = self._params(xr)
        out = torch.zeros_like(x)
        v = v.to(x.dtype)
        with bn_mode(self.model, self.bn_mode), torch.enable_grad(), second_order():
            for b, w in self.batches(first):
                (g,) = torch.autograd.grad(self._batch_loss(params, b), xr, create_graph=True)
                (hv,) = torch.autograd.grad(g, xr, grad_outputs=v)
                out += w * hv
        return out

    def hvp_forward(self, x: Tensor, v: Tensor) -> Tensor:
        """``H(x) v = sum_b w_b H_b v`` by forward-over-reverse (not counted here).

        For each batch ``torch.func.jvp`` of ``torch.func.grad`` of its mean loss, through
        :func:`torch.func.functional_call` (see
        :class:`~sharpminima.landscape.graph_hvp.ForwardHVP`, which also ``vmap``-s this
        over the columns of a block). The loss is first checked by a plain forward pass on
        the first batch, so a failure inside the transforms is the transform's.

        Raises:
            ConfigError: If the loss cannot be evaluated on the first batch.
            ForwardModeUnavailable: If the model has an operation ``torch.func`` cannot
                differentiate forward-over-reverse (a ``ConfigError``).
        """
        from sharpminima.landscape.graph_hvp import unavailable

        out = torch.zeros_like(x)
        v = v.to(x.dtype)
        with bn_mode(self.model, self.bn_mode), second_order():
            for b, w in self.batches():
                if not self._validated:  # the loss's own errors, outside any transform
                    with torch.no_grad():
                        self._batch_loss(self._params(x.detach()), b)

                def batch_loss(p: Tensor, b: Batch = b) -> Tensor:
                    return self._batch_loss(self._params(p), b)

                try:
                    _, hv = torch.func.jvp(grad(batch_loss), (x,), (v,))
                except (RuntimeError, NotImplementedError) as exc:
                    raise unavailable(exc) from None
                out = out + w * hv  # not in place: under vmap ``hv`` is batched, ``out`` not yet
        return out

    def fingerprint(self) -> tuple[Any, ...]:
        """What identifies this objective's evaluation for a cached decision (computed once).

        The model's modules (qualified names and types, in order), its trainable
        parameters' names and shapes, the BatchNorm mode, the loss (type and spec), the
        batch count, the number of samples and the first batch's tensor shapes (recorded by
        the survey of the batch weights, so no extra pass over the data is made).
        """
        if self._fingerprint is None:
            weights = self.weights  # the survey every product needs anyway
            criterion = self.criterion
            kind = type(criterion)
            modules = self.model.named_modules()
            self._fingerprint = (
                tuple((name, f"{type(m).__module__}.{type(m).__qualname__}") for name, m in modules),
                tuple((n, tuple(s)) for n, s in zip(self.names, self.shapes, strict=True)),
                self.bn_mode,
                f"{kind.__module__}.{kind.__qualname__}",
                criterion.spec(),
                len(weights),
                self.num_samples,
                self._first_shapes,
            )
        return self._fingerprint

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return self.hvp_from(x, v, 0)

    @torch.no_grad()
    def loss_and_accuracy(self, x: Tensor) -> tuple[float, float]:
        """Return the mean loss and the accuracy in percent at ``x`` (counted as a loss).

        Accuracy is the share of samples (or counted tokens) whose argmax prediction is
        right, where the loss defines it (classification, next token); NaN otherwise.
        """
        self.counters.num_loss += 1
        params = self._params(x.detach())
        total, correct, defined = 0.0, 0, True
        with bn_mode(self.model, self.bn_mode):
            for b, w in self.batches():
                loss, hits = self._call(params, b, "metrics")
                total += w * float(loss)
                if hits is None:
                    defined = False
                else:
                    correct += int(hits)
        accuracy = 100.0 * correct / self.total_weight if defined else math.nan
        return total, accuracy

    def auto_group_size(self) -> int:
        """Points per batched pass that keep a batch's activations within the memory budget.

        One probe forward pass on a single sample finds the largest module output; a point
        is taken to hold three such tensors per batch sample (input, output, a temporary).
        """
        largest = [0]

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                largest[0] = max(largest[0], output.numel())

        first = self._first_batch()
        one = to_device(select_rows(first, slice(0, 1)), self.device)
        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            with torch.no_grad(), bn_mode(self.model, "eval"):  # running statistics: one sample is enough
                self.criterion.forward(self.model, one)
        finally:
            for h in handles:
                h.remove()
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_point = 3 * max(largest[0], 1) * min(leading_size(first), self.num_samples) * itemsize
        budget = batched_eval.MEMORY_BUDGET
        if self.device.type == "cuda":
            budget = torch.cuda.mem_get_info(self.device)[0] // 4
        return int(max(1, min(batched_eval.DEFAULT_GROUP_SIZE, budget // per_point)))

    @torch.no_grad()
    def loss_and_accuracy_batched(self, xs: Tensor) -> tuple[list[float], list[float]]:
        """Loss and accuracy at the rows of ``xs`` ``(G, n)``, one ``vmap``-ed pass per batch."""
        self.counters.num_loss += xs.shape[0]
        xs = xs.detach().to(device=self.device, dtype=self.dtype)
        params = {
            "model." + n: t.reshape(xs.shape[0], *s)
            for n, t, s in zip(self.names, torch.split(xs, self.numels, dim=1), self.shapes, strict=True)
        }
        evaluator = self._evaluator()
        undefined = [not self.has_accuracy]

        def one(p: dict[str, Tensor], batch: Batch) -> tuple[Tensor, Tensor]:
            loss, hits = functional_call(evaluator, p, (batch,), {"what": "metrics"})
            if hits is None:  # a Python-level fact, seen while vmap traces the function
                undefined[0] = True
                hits = torch.zeros((), dtype=torch.int64, device=loss.device)
            return loss, hits

        per_point = vmap(one, in_dims=(0, None))
        total = torch.zeros(xs.shape[0], dtype=torch.float64, device=self.device)
        correct = torch.zeros(xs.shape[0], dtype=torch.int64, device=self.device)
        with bn_mode(self.model, self.bn_mode):
            for b, w in self.batches():
                loss, hits = per_point(params, b)  # (G,), (G,)
                total += w * loss.double()
                correct += hits
        if undefined[0]:
            return total.tolist(), [math.nan] * xs.shape[0]
        return total.tolist(), (100.0 * correct.double() / self.total_weight).tolist()

    def loss_and_accuracy_many(
        self, points: Iterable[Tensor], *, batched: bool | None = None, group_size: int | None = None
    ) -> tuple[list[float], list[float]]:
        """Loss and accuracy at each point (see :func:`~sharpminima.landscape.batched.evaluate_points`)."""
        return batched_eval.evaluate_points(self, points, batched=batched, group_size=group_size)

    # -- Gauss-Newton ----------------------------------------------------------------------------
    def check_ggn(self) -> None:
        """Raise a clear error if the loss has no Gauss-Newton form here.

        Raises:
            ConfigError: For losses other than cross-entropy and MSE.
        """
        if not self.criterion.has_ggn:
            raise ConfigError(
                "the Gauss-Newton matrix is defined here for cross-entropy and MSE losses (and a "
                f"model's own cross-entropy), not for {self.criterion.spec()!r}; measure the Hessian"
            )

    def ggn_vp(self, x: Tensor, v: Tensor) -> Tensor:
        """Generalised Gauss-Newton product ``G(x) v`` (not counted in :attr:`counters`).

        ``G = sum_b w_b J_b^T H_b J_b``: for each batch ``J_b`` is the Jacobian of its
        outputs with respect to ``x`` and ``H_b`` the Hessian of its mean loss with respect
        to the outputs (:meth:`~sharpminima.losses.Loss.output_hvp`). One forward-mode JVP
        and one reverse-mode VJP per batch.
        """
        evaluator = self._evaluator()
        out = torch.zeros_like(x)
        with bn_mode(self.model, self.bn_mode), second_order():
            for b, w in self.batches():

                def outputs_of(p: Tensor, b: Batch = b) -> Tensor:
                    return functional_call(evaluator, self._params(p), (b,), {"what": "outputs"})

                outputs, jv = torch.func.jvp(outputs_of, (x,), (v,))  # (B, C), (B, C)
                hjv = self.criterion.output_hvp(outputs, b, jv)
                _, vjp_fn = torch.func.vjp(outputs_of, x)
                (jthjv,) = vjp_fn(hjv)  # (n,)
                out += w * jthjv
        return out

    # -- per-sample quantities ------------------------------------------------------------------
    def per_example_gradients(self, x: Tensor, indices: Tensor) -> Tensor:
        """Gradients of the loss of single samples ``indices`` at ``x``, ``(len(indices), n)``.

        Each sample's loss is the loss of a batch holding only it, evaluated with running
        BatchNorm statistics (``"eval"``: with batch statistics it would not be defined).
        Computed with ``vmap(grad)``; a model ``vmap`` cannot batch is done one sample at a
        time.
        """
        params = self._params(x.detach())
        evaluator = self._evaluator()

        def single(p: dict[str, Tensor], example: Batch) -> Tensor:
            return functional_call(evaluator, p, (example,)).reshape(())

        def one(p: dict[str, Tensor], example: Batch) -> Tensor:
            return single(p, tree_map(lambda t: t.unsqueeze(0), example))

        per_example = vmap(grad(one), in_dims=(None, 0))
        blocks = []
        with bn_mode(self.model, "eval"), second_order():
            for batch in self.source.gather(indices):
                batch = to_device(batch, self.device)
                size = leading_size(batch)
                try:
                    g = per_example(params, batch)
                    rows = [torch.cat([g["model." + n].reshape(size, -1) for n in self.names], 1)]
                except RuntimeError as exc:
                    log.info("per-example gradients one sample at a time (vmap failed: %s)", exc)
                    rows = []
                    for i in range(size):
                        gi = grad(single)(params, select_rows(batch, slice(i, i + 1)))
                        rows.append(torch.cat([gi["model." + n].reshape(1, -1) for n in self.names], 1))
                blocks.append(torch.cat(rows))  # (b, n)
        return torch.cat(blocks)

    def subset(self, indices: Tensor) -> ModelObjective:
        """The same loss over the samples ``indices`` only (a new objective)."""
        return ModelObjective(
            self.model,
            self.source.subset(indices),
            loss=self.criterion,
            bn_mode=self.bn_mode,
            chunk_size=self.chunk_size,
        )

    # -- twins -----------------------------------------------------------------------------------
    def with_bn_mode(self, mode: BNMode) -> ModelObjective:
        """The same model, data and loss in BatchNorm mode ``mode``."""
        return self.with_model(self.model, mode)

    def with_model(self, model: nn.Module, mode: BNMode | None = None) -> ModelObjective:
        """The same data and loss on another module of the same architecture."""
        twin = ModelObjective(
            model,
            self.source,
            loss=self.criterion,
            bn_mode=self.bn_mode if mode is None else mode,
            chunk_size=self.chunk_size,
        )
        twin._weights, twin._sizes = self._weights, self._sizes
        twin._first_shapes = self._first_shapes
        if self._weights is not None:
            twin._total = self._total
        return twin

    def with_source(self, data: Any, targets: Tensor | None = None) -> ModelObjective:
        """The same model, loss and BN mode on other data (e.g. the test set)."""
        return ModelObjective(
            self.model, data, targets, loss=self.criterion, bn_mode=self.bn_mode, chunk_size=self.chunk_size
        )

    @torch.no_grad()
    def recompute_bn_statistics(
        self, x: Tensor, *, num_samples: int | None = None, batch_size: int | None = None
    ) -> int:
        """Re-estimate this objective's model's BatchNorm running statistics at ``x``, in place.

        The model must be a private copy (this mutates its buffers). Running statistics are
        reset and re-accumulated as a cumulative average over the data's batches
        (``momentum=None``); only BatchNorm modules are in training mode (dropout off).

        Args:
            x: Flat parameters ``(n,)``.
            num_samples: Use the first samples only (None: all).
            batch_size: Re-cut in-memory data into batches of this size (None: as they are).

        Returns:
            The number of forward passes.

        Raises:
            ConfigError: For a non-positive size, or ``batch_size`` with loader data.
        """
        source = self.source
        if num_samples is not None:
            source = source.head(num_samples)
        if batch_size is not None:
            source = source.rechunk(batch_size)
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m, m.momentum) for m in bns]
        flags = [(m, m.training) for m in self.model.modules()]
        params = self._params(x.detach())
        evaluator = self._evaluator()
        passes = 0
        try:
            self.model.eval()
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            for batch in source.batches():
                functional_call(evaluator, params, (to_device(batch, x.device),), {"what": "forward"})
                passes += 1
        finally:
            for m, mom in saved:
                m.momentum = mom
            for m, training in flags:
                m.training = training
        return passes
