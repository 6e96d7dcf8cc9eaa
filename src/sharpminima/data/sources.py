"""Data sources: the fixed, finite set of batches a loss averages over.

A landscape measure evaluates one function ``f(x)`` many times (L-BFGS-B, Lanczos and
Hutchinson all assume the same function at every evaluation), so the data behind ``f``
must be the same samples, in the same batches, on every pass. A :class:`DataSource` is
that: a re-iterable of batches whose every pass yields the same batches. Three kinds:

* :class:`TensorSource`: in-memory tensors with a common leading dimension (``(inputs,
  targets)`` or any nested structure of them), cut into fixed chunks of ``chunk_size``
  samples (``[0, c), [c, 2c), ...``);
* :class:`LoaderSource`: a :class:`torch.utils.data.DataLoader` or any re-iterable of
  batches (tuples, lists or dicts of tensors, nested), optionally limited to its first
  ``max_batches`` batches or ``max_samples`` samples. A loader that shuffles, and a
  one-shot iterator, are refused; every pass checks that the first batch and the number
  of batches are what the first pass saw, so a random augmentation is caught too;
* :class:`PinnedSource`: batches read once and held in memory (:func:`pin_batches`), the
  way to measure on a shuffling or augmenting pipeline: its first ``N`` batches are fixed.

Batches stay where the source keeps them (usually the CPU) and are moved to the model's
device one at a time by :func:`to_device` (``non_blocking`` copies; pinned memory on
CUDA when pinned). How a batch is weighted in the mean (its number of samples or tokens)
is the loss adapter's business (:mod:`sharpminima.losses`), not the source's.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from sharpminima.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: A batch: a tensor, or tuples, lists and dicts of batches.
Batch = Any


# ------------------------------------------------------------------------------ trees
def tree_map(fn: Callable[[Tensor], Any], tree: Batch) -> Batch:
    """Apply ``fn`` to every tensor of a nested batch, keeping its structure.

    Tuples (named tuples included), lists and mappings are rebuilt; a mapping becomes a
    plain ``dict`` unless its type can be built from one (``BatchEncoding`` can). Other
    leaves (ints, strings, None) are kept as they are.
    """
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        items = {k: tree_map(fn, v) for k, v in tree.items()}
        try:
            return type(tree)(items)  # type: ignore[call-arg]
        except Exception:  # noqa: BLE001 - a mapping type that cannot be built from a dict
            return items
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # named tuple
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def tree_leaves(tree: Batch) -> list[Tensor]:
    """The tensors of a nested batch, in a fixed order (mapping keys as they come)."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [t for v in tree.values() for t in tree_leaves(v)]
    if isinstance(tree, list | tuple):
        return [t for v in tree for t in tree_leaves(v)]
    return []


def leading_size(batch: Batch) -> int:
    """The leading dimension of a batch's first tensor (its number of samples).

    Raises:
        DataError: If the batch holds no tensor with a leading dimension.
    """
    for t in tree_leaves(batch):
        if t.ndim >= 1:
            return int(t.shape[0])
    raise DataError(
        f"a batch of type {type(batch).__name__} holds no tensor with a batch dimension; "
        "yield tensors, or tuples, lists or dicts of tensors"
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a batch to ``device`` (``non_blocking``; a no-op if there)."""
    return tree_map(lambda t: t.to(device, non_blocking=True), batch)


def select_rows(batch: Batch, rows: Tensor | slice) -> Batch:
    """The samples ``rows`` of every tensor of a batch (tensors without a batch dim kept)."""
    n = leading_size(batch)

    def pick(t: Tensor) -> Tensor:
        return t[rows] if t.ndim >= 1 and t.shape[0] == n else t

    return tree_map(pick, batch)


def fingerprint(batch: Batch) -> str:
    """A cheap identity of a batch: shapes, dtypes and float64 sums of every tensor.

    Two passes over a deterministic source give equal fingerprints; a reshuffled or
    randomly augmented batch almost surely does not.
    """
    h = hashlib.sha256()
    for t in tree_leaves(batch):
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            flat = t.detach().reshape(-1)
            weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            values = (
                flat.double() if (flat.is_floating_point() or not flat.is_complex()) else flat.abs().double()
            )
            h.update(f"{float(values.sum()):.17g},{float((values * weights).sum()):.17g}".encode())
    return h.hexdigest()[:16]


def batch_bytes(batch: Batch) -> int:
    """Bytes of the tensors of a batch."""
    return sum(t.numel() * t.element_size() for t in tree_leaves(batch))


# ------------------------------------------------------------------------------ sources
class DataSource(abc.ABC):
    """A fixed, finite sequence of batches: every pass yields the same batches.

    Subclasses implement :meth:`batches` and :meth:`describe`; the rest has defaults.
    """

    kind = "source"

    @abc.abstractmethod
    def batches(self) -> Iterator[Batch]:
        """Yield the batches, in order (where the source keeps them, usually the CPU)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the source is, for settings and store keys (JSON-friendly)."""

    def __iter__(self) -> Iterator[Batch]:
        """One pass over the batches (a source is re-iterable)."""
        return self.batches()

    def head(self, num_samples: int) -> DataSource:
        """The first ``num_samples`` samples, in the same batches (the last one cut).

        Raises:
            ConfigError: If ``num_samples`` is not a positive integer.
        """
        return LoaderSource(self, max_samples=num_samples)

    def gather(self, indices: Tensor) -> list[Batch]:
        """Batches holding the samples ``indices`` (positions in pass order), in that order.

        Consecutive requested samples of one source batch share a returned batch. The
        default reads one pass; in-memory sources index directly.

        Raises:
            ConfigError: If an index is out of range.
        """
        wanted = [int(i) for i in indices.reshape(-1).tolist()]
        if not wanted:
            return []
        held: dict[int, tuple[int, Batch]] = {}  # position -> (batch number, batch)
        start = 0
        need = set(wanted)
        for b, batch in enumerate(self.batches()):
            size = leading_size(batch)
            for pos in range(start, start + size):
                if pos in need:
                    held[pos] = (b, select_rows(batch, slice(pos - start, pos - start + 1)))
            start += size
        missing = [i for i in wanted if i not in held]
        if missing:
            raise ConfigError(f"sample index {missing[0]} is out of range for a source of {start} samples")
        out: list[Batch] = []
        run: list[Batch] = []
        last = None
        for i in wanted:
            b, row = held[i]
            if run and b != last:
                out.append(_concat(run))
                run = []
            run.append(row)
            last = b
        out.append(_concat(run))
        return out

    def subset(self, indices: Tensor) -> DataSource:
        """The samples ``indices`` only, as a source (held in memory)."""
        return PinnedSource(self.gather(indices), origin=f"subset of {self.kind}")

    def rechunk(self, chunk_size: int) -> DataSource:
        """The same samples in batches of ``chunk_size`` (in-memory sources only).

        Raises:
            ConfigError: For a source whose batches are given (a loader).
        """
        raise ConfigError(
            f"a {self.kind} source keeps its own batches; a batch size can be chosen only for "
            "in-memory tensors"
        )

    def held_tensors(self) -> list[Tensor]:
        """Tensors the source keeps in memory anyway (not counted as a graph's memory)."""
        return []


def _concat(rows: list[Batch]) -> Batch:
    """Concatenate batches of one structure along the batch dimension."""
    if len(rows) == 1:
        return rows[0]
    first = rows[0]
    leaves = [tree_leaves(r) for r in rows]
    cat = iter([torch.cat([lv[i] for lv in leaves]) for i in range(len(leaves[0]))])
    return tree_map(lambda _: next(cat), first)


class TensorSource(DataSource):
    """In-memory tensors with a common leading dimension, cut into fixed chunks.

    ``TensorSource(inputs, targets)`` yields ``(inputs[s:s+c], targets[s:s+c])`` for
    ``s = 0, c, 2c, ...``; ``TensorSource(tree)`` does the same for any nested structure of
    tensors (a dict of ``input_ids`` and ``labels``, say).

    Args:
        data: A tensor, or a nested structure of tensors with the same leading size.
        targets: Optional second tensor; the batches are then ``(data, targets)`` tuples.
        chunk_size: Samples per batch.

    Raises:
        ConfigError: For an empty set, mismatched leading sizes or ``chunk_size < 1``.
    """

    kind = "tensors"

    def __init__(self, data: Batch, targets: Tensor | None = None, *, chunk_size: int = 1000) -> None:
        tree = (data, targets) if targets is not None else data
        leaves = [t for t in tree_leaves(tree) if t.ndim >= 1]
        if not leaves:
            raise ConfigError("a tensor source needs at least one tensor with a batch dimension")
        sizes = {int(t.shape[0]) for t in leaves}
        if len(sizes) != 1 or 0 in sizes:
            if targets is not None and isinstance(data, Tensor):
                raise ConfigError(
                    f"need as many targets as inputs (and at least one), got {data.shape[0]} "
                    f"inputs and {targets.shape[0]} targets"
                )
            raise ConfigError(
                f"the tensors of a source must share one non-zero leading size, got {sorted(sizes)}"
            )
        if not (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1):
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size}")
        self.tree = tree
        self.num_samples = sizes.pop()
        self.chunk_size = chunk_size

    def batches(self) -> Iterator[Batch]:
        """Yield the chunks ``[0, c), [c, 2c), ...``."""
        return self.chunks()

    def chunks(self, first: int = 0) -> Iterator[Batch]:
        """Yield the chunks from chunk number ``first`` on."""
        for start in range(first * self.chunk_size, self.num_samples, self.chunk_size):
            yield select_rows(self.tree, slice(start, start + self.chunk_size))

    def head(self, num_samples: int) -> TensorSource:
        """The first ``num_samples`` samples, in chunks of the same size."""
        _check_positive("num_samples", num_samples)
        return TensorSource(select_rows(self.tree, slice(0, num_samples)), chunk_size=self.chunk_size)

    def rechunk(self, chunk_size: int) -> TensorSource:
        """The same samples in chunks of ``chunk_size``."""
        return TensorSource(self.tree, chunk_size=chunk_size)

    def subset(self, indices: Tensor) -> TensorSource:
        """The samples ``indices``, in chunks of the same size."""
        (batch,) = self.gather(indices) or [None]
        if batch is None:
            raise ConfigError("a subset needs at least one sample index")
        return TensorSource(batch, chunk_size=self.chunk_size)

    def gather(self, indices: Tensor) -> list[Batch]:
        """One batch of the samples ``indices``, indexed directly."""
        idx = indices.reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise ConfigError(f"sample index out of range for a source of {self.num_samples} samples")
        return [select_rows(self.tree, idx.to(tree_leaves(self.tree)[0].device))] if idx.numel() else []

    def describe(self) -> dict[str, Any]:
        """Kind, number of samples and chunk size."""
        return {"source": self.kind, "num_samples": self.num_samples, "chunk_size": self.chunk_size}

    def held_tensors(self) -> list[Tensor]:
        """The source's tensors."""
        return tree_leaves(self.tree)


class LoaderSource(DataSource):
    """A DataLoader, or any re-iterable of batches, as a fixed source.

    Every pass iterates ``data`` afresh. The first pass records the number of batches and a
    fingerprint of the first batch (:func:`fingerprint`); a later pass that differs raises
    :class:`~sharpminima.errors.DataError`, because an objective whose batches change
    between evaluations is not one function (a shuffling sampler, random augmentation, a
    dataset that grows). Refused up front: a one-shot iterator (a generator: it can be read
    only once) and a DataLoader whose sampler is random. To measure on such data, pin its
    first batches with :func:`pin_batches`.

    Args:
        data: A DataLoader, a list of batches, or any iterable whose ``iter()`` starts anew.
        max_batches: Use only the first ``max_batches`` batches.
        max_samples: Use only the first ``max_samples`` samples (the last batch is cut).

    Raises:
        ConfigError: For a one-shot iterator, a shuffling DataLoader or a bad limit.
    """

    kind = "loader"

    def __init__(
        self, data: Iterable[Batch], *, max_batches: int | None = None, max_samples: int | None = None
    ) -> None:
        if isinstance(data, Iterator) or iter(data) is data:  # type: ignore[comparison-overlap]
            raise ConfigError(
                f"a {type(data).__name__} can be read only once, but a measure reads its data "
                "many times; pass a DataLoader or a list of batches, or pin_batches(it, N)"
            )
        if isinstance(data, Tensor | Mapping):
            raise ConfigError(
                f"expected batches (a DataLoader or a list of batches), got a {type(data).__name__}; "
                "for in-memory tensors use TensorSource(inputs, targets)"
            )
        _refuse_shuffling(data)
        if max_batches is not None:
            _check_positive("max_batches", max_batches)
        if max_samples is not None:
            _check_positive("max_samples", max_samples)
        self.data = data
        self.max_batches = max_batches
        self.max_samples = max_samples
        self._seen: tuple[int, str] | None = None  # (number of batches, first fingerprint)

    def batches(self) -> Iterator[Batch]:
        """Yield the batches of one pass, checking the pass against the first one."""
        count = 0
        taken = 0
        first = None
        for batch in _fast_batches(self.data):
            if self.max_batches is not None and count >= self.max_batches:
                break
            if self.max_samples is not None:
                size = leading_size(batch)
                if taken >= self.max_samples:
                    break
                if taken + size > self.max_samples:
                    batch = select_rows(batch, slice(0, self.max_samples - taken))
                taken += leading_size(batch)
            if count == 0:
                first = fingerprint(batch)
            count += 1
            yield batch
        self._check_pass(count, first)

    def _check_pass(self, count: int, first: str | None) -> None:
        if count == 0:
            raise DataError("the data source yielded no batch; give it at least one sample")
        assert first is not None
        if self._seen is None:
            self._seen = (count, first)
            return
        if (count, first) != self._seen:
            what = (
                "a different first batch"
                if first != self._seen[1]
                else f"{count} batches, not {self._seen[0]}"
            )
            raise DataError(
                f"the data source gave {what} on a later pass; its batches must be the same on "
                "every pass (no shuffling, no random augmentation): fix them with "
                "sharpminima.data.sources.pin_batches(loader, N)"
            )

    def describe(self) -> dict[str, Any]:
        """Kind, the loader's type and batch size, and the limits."""
        out: dict[str, Any] = {"source": self.kind, "type": type(self.data).__name__}
        batch_size = getattr(self.data, "batch_size", None)
        if isinstance(batch_size, int):
            out["batch_size"] = batch_size
        if self.max_batches is not None:
            out["max_batches"] = self.max_batches
        if self.max_samples is not None:
            out["max_samples"] = self.max_samples
        return out


class PinnedSource(DataSource):
    """Batches held in memory: a list read once from any iterable (see :func:`pin_batches`).

    Args:
        batches: The batches.
        origin: What they were read from (for :meth:`describe`).

    Raises:
        ConfigError: For no batches.
    """

    kind = "pinned"

    def __init__(self, batches: Sequence[Batch], origin: str = "") -> None:
        if not batches:
            raise DataError("the data source yielded no batch; give it at least one sample")
        self._batches = list(batches)
        self.origin = origin
        self.num_samples = sum(leading_size(b) for b in self._batches)
        self.nbytes = sum(batch_bytes(b) for b in self._batches)

    def batches(self) -> Iterator[Batch]:
        """Yield the held batches."""
        return iter(self._batches)

    def describe(self) -> dict[str, Any]:
        """Kind, number of batches and samples, bytes held."""
        return {
            "source": self.kind,
            "origin": self.origin,
            "num_batches": len(self._batches),
            "num_samples": self.num_samples,
            "bytes": self.nbytes,
        }

    def held_tensors(self) -> list[Tensor]:
        """Every held tensor."""
        return [t for b in self._batches for t in tree_leaves(b)]


def pin_batches(
    data: Iterable[Batch],
    num_batches: int | None = None,
    *,
    num_samples: int | None = None,
    pin_memory: bool | None = None,
) -> PinnedSource:
    """Read the first batches of any iterable once and hold them: a fixed source.

    Use it for data whose batches change between passes (a shuffling DataLoader, random
    augmentation): the measure then sees the same ``num_batches`` batches every time.
    Memory: the batches are copied to the CPU and held there (``PinnedSource.nbytes``
    bytes; MNIST's 60,000 images are 188 MB as float32); with ``pin_memory`` (default:
    when CUDA is available) in page-locked memory, so copies to the GPU run asynchronously.

    Args:
        data: Any iterable of batches (a one-shot iterator too).
        num_batches: Batches to keep (None: all, which must be finite).
        num_samples: Alternatively, samples to keep (the last batch is cut).
        pin_memory: Page-lock the held tensors.

    Returns:
        A :class:`PinnedSource`.

    Raises:
        ConfigError: For a bad limit; DataError if ``data`` yields no batch.
    """
    if num_batches is not None:
        _check_positive("num_batches", num_batches)
    if num_samples is not None:
        _check_positive("num_samples", num_samples)
    pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
    held: list[Batch] = []
    taken = 0
    for batch in itertools.islice(data, num_batches):
        if num_samples is not None:
            if taken >= num_samples:
                break
            size = leading_size(batch)
            if taken + size > num_samples:
                batch = select_rows(batch, slice(0, num_samples - taken))
            taken += leading_size(batch)

        def keep(t: Tensor) -> Tensor:
            t = t.detach().to("cpu")
            return t.pin_memory() if pin else t.clone()

        held.append(tree_map(keep, batch))
    return PinnedSource(held, origin=type(data).__name__)


def as_source(
    data: Any,
    targets: Tensor | None = None,
    *,
    chunk_size: int = 1000,
    max_batches: int | None = None,
    max_samples: int | None = None,
) -> DataSource:
    """Turn what a user passes into a :class:`DataSource`.

    * a :class:`DataSource`: itself (limited if asked);
    * a tensor with ``targets``, or a nested structure of tensors: a :class:`TensorSource`;
    * a DataLoader or another re-iterable of batches: a :class:`LoaderSource`.

    Raises:
        ConfigError: For anything else, or as the chosen source does.
    """
    if isinstance(data, DataSource):
        source = data
    elif isinstance(data, Tensor):
        if targets is None:
            raise ConfigError(
                "a tensor of inputs needs its targets: Landscape(model, inputs, targets), or "
                "pass a DataLoader of (inputs, targets) batches"
            )
        source = TensorSource(data, targets, chunk_size=chunk_size)
    elif targets is not None:
        raise ConfigError("targets are given with tensor inputs only; a loader's batches carry their own")
    elif isinstance(data, Mapping):
        source = TensorSource(data, chunk_size=chunk_size)
    elif isinstance(data, Iterable):
        return LoaderSource(data, max_batches=max_batches, max_samples=max_samples)
    else:
        raise ConfigError(
            f"cannot read batches from a {type(data).__name__}; pass tensors, a DataLoader or a "
            "list of batches"
        )
    if max_samples is not None:
        source = source.head(max_samples)
    if max_batches is not None:
        source = LoaderSource(source, max_batches=max_batches)
    return source


# ------------------------------------------------------------------------------ helpers
def _check_positive(name: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _refuse_shuffling(data: Any) -> None:
    """Refuse a DataLoader whose sampler (or batch sampler's sampler) is random."""
    from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

    if not isinstance(data, DataLoader):
        return
    samplers = [
        getattr(data, "sampler", None),
        getattr(getattr(data, "batch_sampler", None), "sampler", None),
    ]
    random = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
    if any(isinstance(s, random) for s in samplers):
        raise ConfigError(
            "the DataLoader shuffles (a random sampler), so each pass would see other batches; "
            "build it with shuffle=False, or fix N batches with pin_batches(loader, N)"
        )


def _fast_batches(data: Any) -> Iterator[Batch]:
    """Iterate ``data``; a plain sequential DataLoader over a TensorDataset is sliced.

    ``DataLoader(TensorDataset(x, y), batch_size=b)`` (sequential, default collate, no
    workers) yields ``[x[s:s+b], y[s:s+b]]``: the same tensors as its per-sample fetch and
    stack, without indexing the dataset one sample at a time.
    """
    from torch.utils.data import DataLoader, SequentialSampler, TensorDataset
    from torch.utils.data._utils.collate import default_collate

    plain = (
        isinstance(data, DataLoader)
        and isinstance(data.dataset, TensorDataset)
        and isinstance(data.sampler, SequentialSampler)
        and data.batch_size is not None
        and data.collate_fn is default_collate
        and data.num_workers == 0
        and not data.pin_memory
    )
    if not plain:
        yield from data
        return
    tensors = data.dataset.tensors
    n = len(data.dataset)
    size = int(data.batch_size)
    stop = n - n % size if data.drop_last else n
    for start in range(0, stop, size):
        yield [t[start : start + size] for t in tensors]
