"""torch.distributed plumbing shared by training and measuring: who am I, shards, broadcasts.

Processes are started by ``torchrun`` (or any launcher that sets the ``env://`` variables
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``).
:func:`session` joins the process group they describe: backend NCCL when CUDA is
available, else gloo; each process uses the GPU ``LOCAL_RANK``. Everything else here is a
no-op, or the identity, when no process group of more than one process is active, so
library code calls these helpers unconditionally.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from sharpminima.errors import ConfigError

__all__ = [
    "ENV_VARS",
    "all_reduce_differentiable",
    "all_reduce_sum",
    "backend_for",
    "broadcast_object",
    "from_root",
    "is_active",
    "is_root",
    "launched",
    "rank",
    "session",
    "shard_range",
    "to_cpu",
    "world_size",
]

#: The variables ``torchrun`` sets for every process (``env://`` initialisation).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_active() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without an active process group)."""
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """Number of processes (1 without an active process group)."""
    return dist.get_world_size() if is_active() else 1


def is_root() -> bool:
    """Whether this process is rank 0: the only one that writes to stores and prints."""
    return rank() == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process.

    Reads only the environment (no torch.distributed call), so the CLI can ask cheaply.
    """
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def backend_for(device: str | torch.device | None = None) -> str:
    """Return ``"nccl"`` for CUDA (the default when CUDA is available), else ``"gloo"``."""
    if device is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def session(backend: str | None = None, timeout_s: float = 1800.0) -> Iterator[bool]:
    """Join the process group described by torchrun's variables for the duration.

    Outside ``torchrun`` (``WORLD_SIZE`` unset or 1), or when a group is already
    initialised by the caller, nothing is done. On CUDA each process selects GPU
    ``LOCAL_RANK`` before joining, so ``"cuda"`` means its own GPU.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default :func:`backend_for` (NCCL if CUDA).
        timeout_s: How long a collective waits for the other processes.

    Yields:
        Whether this call created (and will destroy) the process group.

    Raises:
        ConfigError: If torchrun's variables are incomplete or not integers, or the
            backend is unknown.
    """
    if not launched() or dist.is_initialized():
        yield False
        return
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not; start distributed runs "
            "with torchrun (see docs/distributed.md)"
        )
    try:
        local_rank = int(os.environ["LOCAL_RANK"])
        int(os.environ["RANK"])
    except ValueError:
        raise ConfigError(
            f"RANK and LOCAL_RANK must be integers, got {os.environ['RANK']!r} and "
            f"{os.environ['LOCAL_RANK']!r}"
        ) from None
    chosen = backend or backend_for()
    if chosen not in ("gloo", "nccl"):
        raise ConfigError(f"unknown torch.distributed backend {chosen!r}; use gloo or nccl")
    if chosen == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(chosen, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield True
    finally:
        dist.destroy_process_group()


def shard_range(num: int, world: int, rank_: int, align: int = 1) -> tuple[int, int]:
    """Return rank ``rank_``'s contiguous slice ``[start, stop)`` of ``num`` samples.

    Samples are grouped into blocks of ``align`` (the last block may be shorter) and the
    blocks are split as evenly as possible, earlier ranks taking the extra block; so every
    shard boundary is a multiple of ``align`` and, with ``align`` = the chunk size of a
    chunked loss, each rank's chunks are exactly chunks of the unsharded loss.

    Args:
        num: Number of samples (>= 0).
        world: Number of ranks (>= 1).
        rank_: This rank, ``0 <= rank_ < world``.
        align: Block size (>= 1).

    Returns:
        ``(start, stop)``; empty (``start == stop``) when there are fewer blocks than ranks.

    Raises:
        ConfigError: For a negative ``num``, ``world`` or ``align`` below 1, or a rank
            outside ``[0, world)``.
    """
    if num < 0 or world < 1 or align < 1 or not 0 <= rank_ < world:
        raise ConfigError(
            f"cannot shard {num} samples in blocks of {align} over {world} ranks for rank {rank_}"
        )
    blocks = -(-num // align)
    base, extra = divmod(blocks, world)
    first = rank_ * base + min(rank_, extra)
    count = base + (1 if rank_ < extra else 0)
    return min(first * align, num), min((first + count) * align, num)


def to_cpu(obj: Any) -> Any:
    """Return ``obj`` with every tensor (in dicts, lists, tuples) detached and on the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (the identity without a process group).

    The object travels pickled through :func:`torch.distributed.broadcast_object_list`
    (a transient message between our own processes, never stored); tensors inside should
    be on the CPU (see :func:`to_cpu`), since they are unpickled on the receiver's
    matching device.
    """
    if not is_active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def from_root(fn: Any) -> Any:
    """Run ``fn()`` on rank 0 only and return its result on every rank.

    An exception on rank 0 is raised on every rank (other ranks get a
    :class:`~sharpminima.errors.SharpMinimaError` as is, anything else as a
    ``RuntimeError`` naming it), so no rank waits forever for a broadcast that never comes.
    """
    if not is_active():
        return fn()
    outcome: tuple[str, Any] | None = None
    error: BaseException | None = None
    if dist.get_rank() == 0:
        from sharpminima.errors import SharpMinimaError

        try:
            outcome = ("ok", fn())
        except Exception as exc:
            error = exc
            if not isinstance(exc, SharpMinimaError):  # may not pickle
                exc = RuntimeError(f"rank 0: {type(exc).__name__}: {exc}")
            outcome = ("error", exc)
    outcome = broadcast_object(outcome)
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


def all_reduce_differentiable(tensor: Tensor) -> Tensor:
    """Return the sum of ``tensor`` over ranks, differentiably (the identity without a group).

    For ``y = sum_r x_r`` used in every rank's loss ``L_r``, the backward pass gives each
    rank ``dx_r = sum_r' dL_r'/dy``, i.e. the gradient of the total ``sum_r L_r``; the same
    as :func:`torch.distributed.nn.functional.all_reduce`, which torch 2.13 deprecates.
    """
    return _AllReduceSum.apply(tensor) if is_active() else tensor


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks in place and return it (the identity without a group)."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
