"""Landscape measures on data sharded over the processes of a torch.distributed group.

:class:`DistributedObjective` wraps a rank's local objective (its :class:`ModelObjective`
over its shard of the data) so that value, gradient and Hessian-vector product are those
of the mean over the union of all shards:

``f(x) = sum_r (N_r / N) f_r(x)``, ``grad f = sum_r (N_r / N) grad f_r``,
``H v = sum_r (N_r / N) H_r v``,

where ``f_r`` is the mean loss over rank ``r``'s ``N_r`` samples and ``N = sum_r N_r``.
Each evaluation costs one pass over the local shard and one all-reduce of ``n`` (gradient,
HVP) or one (value) numbers. Every rank gets bitwise the same numbers from the
all-reduce, so a deterministic measure (L-BFGS-B, Lanczos with a fixed seed) takes the same
path on every rank: call :func:`~sharpminima.landscape.keskar_sharpness`,
:func:`~sharpminima.landscape.hessian_eigenvalues` and the other measures on every rank
with the same arguments, unchanged. A dataset too large for one machine is measured by
loading only the local shard on each rank.

BatchNorm in ``"batch"`` mode: the function is defined by its chunks (statistics per
chunk). :func:`shard_objective` cuts shards at multiples of ``chunk_size``, so the sharded
function's chunks are exactly the single-process chunks and the two functions are equal
(up to float summation order) in both BN modes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sharpminima import distributed
from sharpminima.errors import ConfigError
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.objective import BNMode, CountedObjective, Objective

__all__ = ["DistributedObjective", "shard_objective"]


class DistributedObjective(CountedObjective):
    """The mean loss over all ranks' shards, from each rank's local objective.

    Without an active process group it is the local objective (weight 1). When the local
    objective is a network objective, so is this one: parameter layout, model and BN mode
    are the local ones (the same network on every rank), and accuracy, batched
    evaluation and Gauss-Newton products are all-reduced like the loss. What needs
    per-sample data on one process (per-example gradients, sub-samples, re-estimated
    BatchNorm statistics) is not offered, so measures that need it say so.

    Args:
        local: This rank's objective; it must have ``num_samples`` (``N_r``) and the same
            ``dim`` on every rank.

    Raises:
        ConfigError: If ``local`` has no ``num_samples``, the ranks disagree on ``dim``,
            or no rank holds a sample.
    """

    def __init__(self, local: Objective) -> None:
        super().__init__()
        if not hasattr(local, "num_samples"):
            raise ConfigError(
                f"a distributed objective needs a local objective with num_samples (e.g. "
                f"ModelObjective), got {type(local).__name__}"
            )
        self.local = local
        self.dim, self.dtype, self.device = local.dim, local.dtype, local.device
        counts = torch.tensor([float(local.num_samples)], dtype=torch.float64)  # type: ignore[attr-defined]
        if distributed.is_active():
            dims = torch.tensor([float(local.dim), -float(local.dim)], device=self._comm_device())
            torch.distributed.all_reduce(dims, op=torch.distributed.ReduceOp.MAX)
            if dims[0] != -dims[1]:
                raise ConfigError(
                    f"ranks disagree on the number of parameters ({int(-dims[1])} to "
                    f"{int(dims[0])}); every rank must measure the same network"
                )
            counts = distributed.all_reduce_sum(counts.to(self._comm_device()))
        self.total_samples = int(counts[0])
        if self.total_samples < 1:
            raise ConfigError("no rank holds a sample; give each rank its shard of the data")
        self.weight = local.num_samples / self.total_samples  # type: ignore[attr-defined]

    def _comm_device(self) -> torch.device:
        nccl = torch.distributed.get_backend() == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    # -- the network objective's layout: the local one (the same network on every rank) ------
    @property
    def num_samples(self) -> int:
        """Number of samples ``N`` over all ranks."""
        return self.total_samples

    @property
    def model(self) -> nn.Module:
        """The local network."""
        return self.local.model  # type: ignore[attr-defined]

    @property
    def bn_mode(self) -> str:
        """The local BatchNorm mode."""
        return self.local.bn_mode  # type: ignore[attr-defined]

    @property
    def names(self) -> list[str]:
        """Parameter names."""
        return self.local.names  # type: ignore[attr-defined]

    @property
    def shapes(self) -> list[torch.Size]:
        """Parameter shapes."""
        return self.local.shapes  # type: ignore[attr-defined]

    @property
    def numels(self) -> list[int]:
        """Parameter sizes."""
        return self.local.numels  # type: ignore[attr-defined]

    @property
    def has_accuracy(self) -> bool:
        """Whether the local loss defines accuracy."""
        return bool(getattr(self.local, "has_accuracy", False))

    @property
    def chunk_size(self) -> int | None:
        """The local chunk size."""
        return getattr(self.local, "chunk_size", None)

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into named parameter views."""
        return self.local.unflatten(x)  # type: ignore[attr-defined]

    def parameter_layout(self) -> list[tuple[str, int]]:
        """``(name, numel)`` per parameter tensor."""
        return self.local.parameter_layout()  # type: ignore[attr-defined]

    def base_point(self) -> Tensor:
        """The local objective's base point (the same network on every rank)."""
        return self.local.base_point()  # type: ignore[attr-defined]

    def settings(self) -> dict:
        """The local objective's settings with the global ``num_samples`` and ``world_size``."""
        base = self.local.settings() if hasattr(self.local, "settings") else {}
        return {**base, "num_samples": self.total_samples, "world_size": distributed.world_size()}

    def with_bn_mode(self, mode: str) -> DistributedObjective:
        """The same sharded loss in another BatchNorm mode."""
        return DistributedObjective(self.local.with_bn_mode(mode))  # type: ignore[attr-defined]

    def with_model(self, model: nn.Module, mode: str | None = None) -> DistributedObjective:
        """The same sharded loss on another module of the same architecture."""
        return DistributedObjective(self.local.with_model(model, mode))  # type: ignore[attr-defined]

    # -- reduced evaluations -----------------------------------------------------------------
    def _reduce(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor * weight`` over ranks (on the communication device)."""
        if not distributed.is_active():
            return tensor
        device = self._comm_device()
        out = (tensor * self.weight).to(device)
        distributed.all_reduce_sum(out)
        return out.to(tensor.device)

    def __call__(self, x: Tensor) -> Tensor:
        """Return ``f(x)`` differentiably (the backward pass all-reduces too)."""
        value = self.local(x)  # type: ignore[operator]
        if not distributed.is_active():
            return value
        return distributed.all_reduce_differentiable(value * self.weight)

    def _loss(self, x: Tensor) -> Tensor:
        value = self.local._loss(x).double().reshape(1)  # type: ignore[attr-defined]
        return self._reduce(value)[0].to(self.dtype)

    def _loss_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        value, grad = self.local._loss_and_grad(x)  # type: ignore[attr-defined]
        packed = self._reduce(torch.cat([grad, value.reshape(1).to(grad.dtype)]))  # (n + 1,)
        return packed[-1].to(self.dtype), packed[:-1]

    def _hvp(self, x: Tensor, v: Tensor) -> Tensor:
        return self._reduce(self.local._hvp(x, v))  # type: ignore[attr-defined]

    def ggn_vp(self, x: Tensor, v: Tensor) -> Tensor:
        """All-reduced Gauss-Newton product."""
        return self._reduce(self.local.ggn_vp(x, v))  # type: ignore[attr-defined]

    def check_ggn(self) -> None:
        """The local loss's Gauss-Newton check."""
        check = getattr(self.local, "check_ggn", None)
        if callable(check):
            check()

    @torch.no_grad()
    def loss_and_accuracy(self, x: Tensor) -> tuple[float, float]:
        """Global mean loss and accuracy (percent) at ``x`` (counted as a loss)."""
        self.counters.num_loss += 1
        loss, acc = self.local.loss_and_accuracy(x)  # type: ignore[attr-defined]
        sums = self._reduce(torch.tensor([loss, acc], dtype=torch.float64))
        return float(sums[0]), float(sums[1])

    @torch.no_grad()
    def loss_and_accuracy_batched(self, xs: Tensor) -> tuple[list[float], list[float]]:
        """Global losses and accuracies at the rows of ``xs`` ``(G, n)``."""
        self.counters.num_loss += xs.shape[0]
        losses, accs = self.local.loss_and_accuracy_batched(xs)  # type: ignore[attr-defined]
        sums = self._reduce(torch.tensor([losses, accs], dtype=torch.float64))  # (2, G)
        return sums[0].tolist(), sums[1].tolist()


def shard_objective(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    bn_mode: BNMode = "batch",
    chunk_size: int = 1000,
    **kwargs: Any,
) -> DistributedObjective:
    """Build this rank's :class:`DistributedObjective` over its shard of the full data.

    Each rank keeps the contiguous slice :func:`~sharpminima.distributed.shard_range`
    gives it, cut at multiples of ``chunk_size`` (see the module docstring), and the result
    equals ``ModelObjective(model, inputs, targets, ...)`` of a single process. When the
    data do not fit one machine, build ``ModelObjective`` on each rank's own shard and wrap
    it in :class:`DistributedObjective` instead.

    Args:
        model: The network (same weights on every rank).
        inputs: All ``N`` inputs ``(N, ...)`` (only the local slice is used).
        targets: All ``N`` labels.
        bn_mode: ``"batch"`` or ``"eval"``, as in :class:`ModelObjective`.
        chunk_size: Samples per forward pass and per BatchNorm batch.
        **kwargs: Passed to :class:`ModelObjective` (``loss_fn``).

    Raises:
        ConfigError: If there are fewer chunks than ranks (a rank would hold no data).
    """
    n, world, rank = int(inputs.shape[0]), distributed.world_size(), distributed.rank()
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size}")
    if -(-n // chunk_size) < world:
        raise ConfigError(
            f"{n} samples in chunks of {chunk_size} give fewer chunks than the {world} "
            "processes; lower chunk_size or use fewer processes"
        )
    start, stop = distributed.shard_range(n, world, rank, align=chunk_size)
    local = ModelObjective(
        model, inputs[start:stop], targets[start:stop], bn_mode=bn_mode, chunk_size=chunk_size, **kwargs
    )
    return DistributedObjective(local)
