"""Data-parallel training with torch.distributed: how ``train()`` runs under ``torchrun``.

The training loop calls three hooks, each the plain single-process object when no process
group is active (:func:`sharpminima.distributed.is_active`):

* :func:`open_run_files`: rank 0 owns the run's record and checkpoints; the other ranks
  get from it, by broadcast, whether the run is finished, the initial weights, the resumed
  model, optimizer and stopping state, and the stored run. Only rank 0 writes.
* :func:`parallel_step`: wraps the method's step in :class:`DataParallelStep`, which
  hands the method a :class:`~torch.nn.parallel.DistributedDataParallel` model and this
  rank's shard of the global batch.
* :func:`parallel_evaluate`: each rank evaluates a contiguous shard of the data in eval
  mode; sums are all-reduced, so every rank gets the same full-data metrics.

Normalisation. Every rank sees the same global batch of ``B`` samples (the loop's seeded
permutation) and takes the slice ``tensor_split(B, W)[r]`` of ``n_r`` samples. The
method's loss on a rank is the mean over its shard, ``L_r``; the global batch loss is
``L = sum_r (n_r / B) L_r``. DDP averages gradients over the ``W`` ranks, so the gradient
flowing back into each rank's network output is scaled by ``w_r = n_r W / B`` (an identity
in the forward pass): the averaged gradient is then ``(1/W) sum_r w_r grad L_r = grad L``,
also when the last batch does not split evenly, and a penalty on the parameters that every
rank adds (a proximal term, weight decay in the loss) is averaged to itself, unscaled.

BatchNorm. Per-shard batch statistics would make the step differ from single-process
training, so during each step every BatchNorm layer is swapped for a synchronised one that
normalises with the statistics of the global batch: :class:`torch.nn.SyncBatchNorm` on
GPUs, and on CPUs (where ``SyncBatchNorm`` raises "expected input tensor to be on GPU" in
torch 2.13) :class:`AllReduceBatchNorm`, which all-reduces per-channel sums with the
differentiable :func:`torch.distributed.nn.functional.all_reduce`. Outside the step the
model holds its ordinary BatchNorm layers (evaluation, checkpoints and landscape measures
are unchanged). Running statistics are updated from global-batch statistics, so they are
identical on all ranks and DDP need not broadcast buffers.

Dropout. Every rank draws from the same seeded random stream (so a method that draws
random perturbations keeps the replicas identical), hence rank ``r``'s dropout mask is not
the slice of the mask single-process training would draw. Runs with dropout (C1-C4) are
statistically, not numerically, equivalent to single-process runs; nets without dropout
(F1, F2) match to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from sharpminima import distributed
from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError, StoreError
from sharpminima.losses import Loss
from sharpminima.train.checkpointing import RunFiles
from sharpminima.train.evaluate import evaluate
from sharpminima.train.methods import StepFn

__all__ = [
    "AllReduceBatchNorm",
    "DataParallelStep",
    "FollowerStore",
    "RankFiles",
    "follower_store",
    "open_run_files",
    "parallel_evaluate",
    "parallel_step",
]


# ----------------------------------------------------------------------------- BatchNorm
class AllReduceBatchNorm(nn.Module):
    """A BatchNorm layer whose training-mode statistics are those of the global batch.

    Shares the parameters and running buffers of the wrapped layer. In training mode the
    per-channel mean and biased variance are computed over the samples of all ranks,
    ``mean = sum_r S1_r / n``, ``var = sum_r sum_i (x_i - mean)^2 / n`` (two all-reduces,
    centred for accuracy), with the differentiable all-reduce, so the backward pass also
    sums the statistics' gradients over ranks. Running statistics follow
    :class:`torch.nn.BatchNorm1d` (momentum or cumulative average; unbiased variance
    ``var * n / (n - 1)``). In eval mode it is the wrapped layer.

    Args:
        bn: The layer to synchronise (``BatchNorm1d/2d/3d``).
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``(B, C, ...)`` with global-batch statistics in training mode."""
        all_reduce = distributed.all_reduce_differentiable
        bn = self.bn
        if not bn.training and bn.track_running_stats:
            return bn(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        local_n = x.numel() // max(1, x.shape[1])
        n_total = torch.tensor([float(local_n)], dtype=x.dtype, device=x.device)
        sums = torch.cat([x.sum(dims), n_total])  # (C + 1,)
        sums = all_reduce(sums)
        n = sums[-1]
        mean = sums[:-1] / n  # (C,)
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / n  # (C,)
        out = centred * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            out = out * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                count = float(n)
                unbiased = var.detach() * (count / max(count - 1.0, 1.0))
                bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                bn.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return out


def _sync_layer(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """The synchronised stand-in of one BatchNorm layer (sharing its tensors)."""
    if bn.weight is not None and bn.weight.device.type != "cpu":
        sync = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            sync.weight, sync.bias = bn.weight, bn.bias
        sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
        sync.num_batches_tracked = bn.num_batches_tracked
        return sync
    return AllReduceBatchNorm(bn)


class _BatchNormSwap:
    """Swap every BatchNorm layer of a model for its synchronised stand-in, temporarily."""

    def __init__(self, model: nn.Module) -> None:
        self.slots: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
        for parent in model.modules():
            for name, child in parent.named_children():
                is_bn = isinstance(child, nn.modules.batchnorm._BatchNorm)
                if is_bn and not isinstance(child, nn.SyncBatchNorm):
                    self.slots.append((parent, name, child, _sync_layer(child)))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        for parent, name, bn, sync in self.slots:
            sync.training = bn.training
            setattr(parent, name, sync)
        try:
            yield
        finally:
            for parent, name, bn, _ in self.slots:
                setattr(parent, name, bn)


# ----------------------------------------------------------------------------- the step
class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``weight`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: float) -> Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.weight, None


class _ShardWeighted(nn.Module):
    """The model a method sees: DDP, with its output's gradient scaled by ``weight``."""

    def __init__(self, ddp: nn.Module) -> None:
        super().__init__()
        self.ddp = ddp
        self.weight = 1.0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.ddp(*args, **kwargs)
        return out if self.weight == 1.0 else _ScaleGrad.apply(out, self.weight)


class DataParallelStep:
    """A method's step run data-parallel: this rank's shard, DDP gradients, global loss.

    Called as ``step(model, optimizer, inputs, targets)`` with the *global* batch, like
    any :data:`~sharpminima.train.methods.StepFn`; returns the global batch's mean loss
    ``sum_r (n_r / B) L_r`` (all-reduced, identical on every rank). See the module
    docstring for the gradient weighting and BatchNorm.

    Args:
        step: The method's step function.
        model: The network being trained (on its device, same weights on every rank).
    """

    def __init__(self, step: StepFn, model: nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.step = step
        self.model = model
        self.world = distributed.world_size()
        self.rank = distributed.rank()
        param = next(model.parameters())
        device_ids = [param.device.index] if param.device.type == "cuda" else None
        # Buffers (BatchNorm running statistics) are identical on every rank already.
        self.ddp = DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
        self.wrapper = _ShardWeighted(self.ddp)
        self.swap = _BatchNormSwap(model)

    def __call__(self, model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        """Run one step on this rank's shard of the global batch ``(xb, yb)``.

        Raises:
            ConfigError: If the batch has fewer samples than there are ranks, or
                ``model`` is not the network this step was built for.
        """
        if model is not self.model:
            raise ConfigError("a data-parallel step must be called with the model it was built for")
        total = xb.shape[0]
        if total < self.world:
            raise ConfigError(
                f"a batch of {total} samples cannot be split over {self.world} processes; "
                "choose a batch size (and training set size) whose last batch has at least "
                "one sample per process"
            )
        xs, ys = xb.tensor_split(self.world)[self.rank], yb.tensor_split(self.world)[self.rank]
        n_local = xs.shape[0]
        self.wrapper.weight = n_local * self.world / total
        with self.swap.active():
            loss = self.step(self.wrapper, opt, xs, ys)
        weighted = loss.detach().double().reshape(1) * (n_local / total)
        dist.all_reduce(weighted)
        return weighted[0].to(loss.dtype)


def parallel_step(step: StepFn, model: nn.Module) -> StepFn:
    """Return ``step`` itself, or a :class:`DataParallelStep` when a process group is active."""
    return DataParallelStep(step, model) if distributed.is_active() else step


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def parallel_evaluate(
    model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int = 10_000, criterion: Loss | None = None
) -> tuple[float, float | None]:
    """Full-data eval-mode loss and accuracy, each rank evaluating a contiguous shard.

    Same result as :func:`~sharpminima.train.evaluate.evaluate` (eval mode has no batch
    dependence): the per-rank sums of losses (float64), of counted terms and of correct
    predictions are all-reduced, so every rank returns the same numbers.
    """
    if not distributed.is_active():
        return evaluate(model, inputs, targets, chunk, criterion)
    n = int(inputs.shape[0])
    start, stop = distributed.shard_range(n, distributed.world_size(), distributed.rank())
    sums = torch.zeros(3, dtype=torch.float64, device=inputs.device)
    defined = True
    if stop > start:
        loss, acc = evaluate(model, inputs[start:stop], targets[start:stop], chunk, criterion)
        local = (criterion.count((inputs[start:stop], targets[start:stop])) if criterion is not None
                 else stop - start)
        defined = acc is not None
        sums[0], sums[1], sums[2] = loss * local, round((acc or 0.0) * local / 100.0), local
    dist.all_reduce(sums)
    total = float(sums[2])
    return float(sums[0]) / total, (100.0 * float(sums[1]) / total if defined else None)


# ----------------------------------------------------------------------------- the store
class RankFiles:
    """:class:`~sharpminima.train.checkpointing.RunFiles` for one rank of a process group.

    Rank 0 holds the real record and files; the other ranks hold a store-less stand-in.
    Every method is called on all ranks in the same order (the loop's control flow is the
    same everywhere); reads happen on rank 0 and are broadcast, writes happen on rank 0.
    """

    def __init__(self, inner: RunFiles, root: Any) -> None:
        self.inner = inner
        self.run_id = inner.run_id
        self.config = inner.config
        self._root = root

    @classmethod
    def open(cls, store: Any, config: TrainConfig) -> RankFiles:
        """Open the run on rank 0 (creating its record); the id is broadcast.

        Raises:
            StoreError: As :meth:`RunFiles.open` on rank 0, raised on every rank.
        """
        holder: list[RunFiles] = []

        def on_root() -> tuple[str, Any]:
            files = RunFiles.open(store, config)
            holder.append(files)
            return files.run_id, files.root

        run_id, root = distributed.from_root(on_root)
        inner = holder[0] if holder else RunFiles(None, config, run_id)
        return cls(inner, root)

    @property
    def root(self) -> Any:
        """The store root of rank 0 (as rank 0 sees it)."""
        return self._root

    def finished(self) -> bool:
        """Whether rank 0's store holds the run as done or diverged."""
        return bool(distributed.from_root(self.inner.finished))

    def load_run(self, make_model: Callable[[], nn.Module]) -> Any:
        """Return the finished run on every rank (weights and history from rank 0)."""
        from sharpminima.train.run import Run

        holder: list[Any] = []

        def on_root() -> dict[str, Any]:
            run = self.inner.load_run(make_model)
            holder.append(run)
            return {
                "model": distributed.to_cpu(run.model.state_dict()),
                "init": distributed.to_cpu(run.init_state),
                "status": run.status,
                "message": run.message,
                "history": run.history,
            }

        sent = distributed.from_root(on_root)
        if holder:
            return holder[0]
        model = make_model()
        model.load_state_dict(sent["model"])
        device = next(model.parameters()).device
        init = {k: v.to(device) for k, v in sent["init"].items()}
        status, message, history = sent["status"], sent["message"], sent["history"]
        return Run(self.run_id, self.config, status, message, history, model, init, self._root)

    def weights_of(self, spec: str) -> dict[str, Tensor]:
        """Stored weights named ``spec``, read on rank 0 (see :meth:`RunFiles.weights_of`)."""
        return distributed.from_root(lambda: distributed.to_cpu(self.inner.weights_of(spec)))

    def initial_weights(self, model: nn.Module) -> dict[str, Tensor]:
        """Rank 0 saves (or reloads) the initial weights; every rank starts from them."""

        def on_root() -> dict[str, Tensor]:
            self.inner.initial_weights(model)
            return distributed.to_cpu(model.state_dict())

        model.load_state_dict(distributed.from_root(on_root))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def resume(self, model: nn.Module, opt: torch.optim.Optimizer, stop: Any, history: list[dict]) -> int:
        """Rank 0 loads the last checkpoint; every rank continues from its state."""

        def on_root() -> dict[str, Any]:
            epoch = self.inner.resume(model, opt, stop, history)
            state: dict[str, Any] = {"epoch": epoch}
            if epoch > 0:
                state.update(
                    model=distributed.to_cpu(model.state_dict()),
                    optimizer=distributed.to_cpu(opt.state_dict()),
                    stop=(stop.best, stop.bad_epochs),
                    history=history,
                )
            return state

        state = distributed.from_root(on_root)
        if state["epoch"] > 0 and not distributed.is_root():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            stop.best, stop.bad_epochs = state["stop"]
            history[:] = state["history"]
        return int(state["epoch"])

    def mark_running(self) -> None:
        """Record (on rank 0) that training is under way."""
        self.inner.mark_running()

    def end_epoch(self, *args: Any, **kwargs: Any) -> None:
        """Record the epoch and checkpoint, on rank 0 only."""
        self.inner.end_epoch(*args, **kwargs)

    def finish(self, *args: Any, **kwargs: Any) -> None:
        """Save final weights and record the end, on rank 0 only."""
        self.inner.finish(*args, **kwargs)


def open_run_files(store: Any, config: TrainConfig) -> RunFiles | RankFiles:
    """Return :class:`RunFiles` or, with an active process group, :class:`RankFiles`."""
    return RankFiles.open(store, config) if distributed.is_active() else RunFiles.open(store, config)


class FollowerStore:
    """The run store as a rank > 0 sees it: reads from the shared store, writes kept in memory.

    Under ``torchrun`` code written for one process (``reproduce``: train, then measure and
    store the measurement) runs on every rank; training is data-parallel through
    :class:`RankFiles`, everything else is computed redundantly. Rank 0 writes the store;
    the other ranks read it (it must be on a file system they share) and keep their own
    measurements in memory, so nothing is written twice and a rank never waits for
    another's write.

    Args:
        store: The real :class:`~sharpminima.store.Store`.
    """

    _WRITES = frozenset({"set_status", "log_epoch", "truncate_epochs", "heartbeat"})

    def __init__(self, store: Any) -> None:
        self._store = store
        self._measurements: dict[tuple[str, str, str], dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        if name in self._WRITES:
            return lambda *args, **kwargs: None
        if name in ("get_or_create_run", "claim_next"):
            raise StoreError(f"Store.{name} must run on rank 0 only under torchrun")
        return getattr(self._store, name)

    def add_measurement(
        self, run_id: str, kind: str, params: dict, value: float, cost: dict, result: dict
    ) -> int:
        """Keep the measurement in memory (rank 0 stores it)."""
        from sharpminima.store._json import hash_json

        key = (run_id, kind, hash_json(params, what="params"))
        self._measurements[key] = {
            "id": -1, "run_id": run_id, "kind": kind, "params": params, "params_hash": key[2],
            "value": value, "cost": cost, "result": result, "created_at": "",
        }
        return -1

    def get_measurement(self, run_id: str, kind: str, params: dict) -> dict[str, Any] | None:
        """This rank's own measurement, else the shared store's."""
        from sharpminima.store._json import hash_json

        key = (run_id, kind, hash_json(params, what="params"))
        return self._measurements.get(key) or self._store.get_measurement(run_id, kind, params)


def follower_store(store: Any) -> Any:
    """Return ``store`` on rank 0 (or without a process group), a :class:`FollowerStore` else."""
    return store if distributed.is_root() else FollowerStore(store)
