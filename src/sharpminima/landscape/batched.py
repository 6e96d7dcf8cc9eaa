"""The loss at many parameter vectors: one at a time, or several per forward pass.

An interpolation plot (25 points), a 2-D surface (121 points) or an average-sharpness
estimate (``2 x num_samples`` points) evaluates the same objective at many points that do
not depend on each other. :func:`evaluate_points` evaluates them either

* one at a time (the reference path): ``ModelObjective.loss_and_accuracy`` per point; or
* batched: up to ``group_size`` flat vectors are unflattened into stacked parameters
  ``(G, ...)`` and the network runs once per data chunk under ``vmap`` over them,
  ``logits = vmap(functional_call(model, params_g, x_chunk))  # (G, B, classes)``.

Both give ``f(x) = sum_c (n_c / N) loss(model(x; chunk_c), y_c)``, accumulated in float64
per point, in the objective's BatchNorm mode (``"batch"``: statistics of each chunk and
each point separately, as in the one-at-a-time path; ``"eval"``: the model's running
statistics, shared). They differ only by the rounding of batched versus single matrix
products (``tests/landscape/test_batched.py``: within ``1e-5`` relative in float32, ``1e-12``
in float64; accuracies equal except for exact ties).

Which is faster depends on the device. On a GPU a small network leaves most of the device
idle, and G points per launch fill it. On a CPU the work is GEMM-bound either way, yet on
our 2-core machine (busy, load ~8) batched interpolation of F1 took 0.4x the time of one
point at a time (``benchmarks/bench_trials.py``; fewer, larger kernels mean fewer thread
barriers, which stall whenever another process holds a core). So :func:`default_batched`
is True on CPU and CUDA alike; every measure that uses this takes ``batched=None`` (that
default), ``True`` or ``False``, and the benchmark re-measures it on an idle machine.

Memory: a batched pass holds G copies of a chunk's activations. With ``group_size=None``
G is chosen from one probe forward pass on a single sample (the largest module output
times the chunk size times 3 live tensors per point) to fit :data:`MEMORY_BUDGET` bytes
(on CUDA, a quarter of the free memory), between 1 and :data:`DEFAULT_GROUP_SIZE`.

Plain callables (:class:`~sharpminima.landscape.objective.FunctionObjective`) are always
evaluated one at a time: an arbitrary function need not be ``vmap``-able.

Not batched: Keskar sharpness and its multistart variant. Each start is an L-BFGS-B (or
sign-gradient ascent) run whose every evaluation is a loss *and gradient* at an iterate
that depends on the previous one, so there is no set of independent loss evaluations to
batch; the extra starts' initial points are drawn, not evaluated, before their runs. A
network that ``vmap`` cannot batch (data-dependent Python control flow) is evaluated one
point at a time, with a logged note.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from itertools import islice

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import ModelObjective, Objective, bn_mode

log = logging.getLogger(__name__)

#: Most points per batched forward pass (memory grows with it: G copies of the activations).
DEFAULT_GROUP_SIZE = 8
#: Bytes of activations a batched pass may hold on a CPU.
MEMORY_BUDGET = 1 << 30


def default_batched(device: torch.device | str) -> bool:
    """Whether batched evaluation is the default on ``device``.

    CUDA only: on the 2-core CPU an idle-machine benchmark (``benchmarks/bench_trials.py``,
    RESULTS.md) measured batched interpolation of F1 1.26x *slower* than one point at a
    time (GEMM-bound either way); an earlier busy-machine probe that suggested otherwise
    was noise. On CUDA, several points per pass fill a GPU that one small net leaves idle
    (not yet measured: no GPU was lent).
    """
    return torch.device(device).type == "cuda"


@torch.no_grad()
def auto_group_size(obj: ModelObjective) -> int:
    """Points per batched pass that keep a chunk's activations within the memory budget.

    One probe forward pass on a single sample finds the largest module output; a point
    is taken to hold three such tensors per chunk sample (input, output and a temporary).

    Args:
        obj: The objective (its model, chunk size, dtype and device).

    Returns:
        An int between 1 and :data:`DEFAULT_GROUP_SIZE`.
    """
    largest = [0]

    def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            largest[0] = max(largest[0], output.numel())

    handles = [m.register_forward_hook(hook) for m in obj.model.modules()]
    try:
        with bn_mode(obj.model, "eval"):  # running statistics: one sample is enough
            obj.model(obj.inputs[:1].to(obj.device))
    finally:
        for h in handles:
            h.remove()
    itemsize = torch.empty((), dtype=obj.dtype).element_size()
    per_point = 3 * max(largest[0], 1) * min(obj.chunk_size, obj.num_samples) * itemsize
    budget = MEMORY_BUDGET
    if obj.device.type == "cuda":
        budget = torch.cuda.mem_get_info(obj.device)[0] // 4
    return int(max(1, min(DEFAULT_GROUP_SIZE, budget // per_point)))


def evaluate_points(
    objective: Objective,
    points: Iterable[Tensor],
    *,
    batched: bool | None = None,
    group_size: int | None = None,
) -> tuple[list[float], list[float]]:
    """Return the loss and accuracy (percent; NaN for plain callables) at each point.

    Each point is counted as one loss evaluation in ``objective.counters``. Points are
    consumed lazily, ``group_size`` at a time, so a long iterable of network-sized
    vectors never sits in memory at once.

    Args:
        objective: The objective; batched evaluation needs a
            :class:`~sharpminima.landscape.objective.ModelObjective`.
        points: Flat parameter vectors ``(n,)``.
        batched: Evaluate several points per forward pass; None: :func:`default_batched`
            for the objective's device.
        group_size: Points per batched pass (``>= 1``); None: :func:`auto_group_size`.

    Returns:
        ``(losses, accuracies)``, one float per point, in order.

    Raises:
        ConfigError: For a ``group_size`` that is not a positive integer.
    """
    if group_size is not None and not (isinstance(group_size, int) and group_size >= 1):
        raise ConfigError(f"group_size must be a positive integer, got {group_size!r}")
    use_batched = default_batched(objective.device) if batched is None else bool(batched)
    losses: list[float] = []
    accs: list[float] = []
    if not (use_batched and isinstance(objective, ModelObjective)):
        for x in points:
            if isinstance(objective, ModelObjective):
                lv, av = objective.loss_and_accuracy(x)
            else:
                lv, av = float(objective.loss(x)), math.nan
            losses.append(lv)
            accs.append(av)
        return losses, accs
    size = auto_group_size(objective) if group_size is None else group_size
    groups = _groups(points, size)
    for group in groups:
        try:
            lv, av = _loss_and_accuracy_batched(objective, torch.stack(group))
        except RuntimeError as exc:  # a network vmap cannot batch (data-dependent control flow...)
            if losses:
                raise
            log.info("evaluating points one at a time: the network cannot be batched (%s)", exc)
            objective.counters.num_loss -= len(group)
            rest = (x for g in [group, *groups] for x in g)
            return evaluate_points(objective, rest, batched=False)
        losses += lv
        accs += av
    return losses, accs


def _groups(points: Iterable[Tensor], size: int) -> Iterator[list[Tensor]]:
    it = iter(points)
    while group := list(islice(it, size)):
        yield group


@torch.no_grad()
def _loss_and_accuracy_batched(obj: ModelObjective, xs: Tensor) -> tuple[list[float], list[float]]:
    """Loss and accuracy of ``obj`` at the rows of ``xs`` ``(G, n)`` in one pass per chunk."""
    obj.counters.num_loss += xs.shape[0]
    xs = xs.detach().to(device=obj.device, dtype=obj.dtype)
    params = {n: t.reshape(xs.shape[0], *s)
              for n, t, s in zip(obj.names, torch.split(xs, obj.numels, dim=1), obj.shapes, strict=True)}

    def one(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        logits = functional_call(obj.model, p, (xb,))  # (B, classes)
        return obj.loss_fn(logits, yb), (logits.argmax(dim=1) == yb).sum()

    per_point = vmap(one, in_dims=(0, None, None))
    total = torch.zeros(xs.shape[0], dtype=torch.float64, device=obj.device)
    correct = torch.zeros(xs.shape[0], dtype=torch.int64, device=obj.device)
    with bn_mode(obj.model, obj.bn_mode):
        for xb, yb, w in obj.chunks():
            loss, hits = per_point(params, xb, yb)  # (G,), (G,)
            total += w * loss.double()
            correct += hits
    return total.tolist(), (100.0 * correct.double() / obj.num_samples).tolist()
