"""The loss at many parameter vectors: one at a time, or several per forward pass.

An interpolation plot (25 points), a 2-D surface (121 points) or an average-sharpness
estimate (``2 x num_samples`` points) evaluates the same objective at many points that do
not depend on each other. :func:`evaluate_points` evaluates them either

* one at a time (the reference path): the objective's ``loss_and_accuracy`` per point; or
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
idle, and G points per launch fill it. On a CPU the work is GEMM-bound either way, and on
the idle 2-core machine batched interpolation of F1 was 1.26x slower than one point at a
time (``benchmarks/bench_trials.py``). So :func:`default_batched` is True on CUDA only;
every measure that uses this takes ``batched=None`` (that default), ``True`` or ``False``.

Memory: a batched pass holds G copies of a chunk's activations. With ``group_size=None``
G is chosen from one probe forward pass on a single sample (the largest module output
times the chunk size times 3 live tensors per point) to fit :data:`MEMORY_BUDGET` bytes
(on CUDA, a quarter of the free memory), between 1 and :data:`DEFAULT_GROUP_SIZE`.

Plain callables (:class:`~sharpminima.landscape.objective.FunctionObjective`) are always
evaluated one at a time: an arbitrary function need not be ``vmap``-able. The batched pass
itself is the network objective's ``loss_and_accuracy_batched``
(:class:`~sharpminima.landscape.model_objective.ModelObjective`).

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

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import Objective

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


def evaluate_points(
    objective: Objective,
    points: Iterable[Tensor],
    *,
    batched: bool | None = None,
    group_size: int | None = None,
) -> tuple[list[float], list[float]]:
    """Return the loss and accuracy (percent; NaN where undefined) at each point.

    Each point is counted as one loss evaluation in ``objective.counters``. Points are
    consumed lazily, ``group_size`` at a time, so a long iterable of network-sized
    vectors never sits in memory at once. An objective with ``loss_and_accuracy`` (a
    network objective) reports accuracy; with ``loss_and_accuracy_batched`` it can be
    evaluated several points per pass; a plain function is evaluated one point at a time.

    Args:
        objective: The objective.
        points: Flat parameter vectors ``(n,)``.
        batched: Evaluate several points per forward pass; None: :func:`default_batched`
            for the objective's device.
        group_size: Points per batched pass (``>= 1``); None: the objective's
            ``auto_group_size()``, else :data:`DEFAULT_GROUP_SIZE`.

    Returns:
        ``(losses, accuracies)``, one float per point, in order.

    Raises:
        ConfigError: For a ``group_size`` that is not a positive integer.
    """
    if group_size is not None and not (isinstance(group_size, int) and group_size >= 1):
        raise ConfigError(f"group_size must be a positive integer, got {group_size!r}")
    use_batched = default_batched(objective.device) if batched is None else bool(batched)
    many = getattr(objective, "loss_and_accuracy_batched", None)
    one = getattr(objective, "loss_and_accuracy", None)
    losses: list[float] = []
    accs: list[float] = []
    if not (use_batched and callable(many)):
        for x in points:
            if callable(one):
                lv, av = one(x)
            else:
                lv, av = float(objective.loss(x)), math.nan
            losses.append(lv)
            accs.append(av)
        return losses, accs
    if group_size is not None:
        size = group_size
    else:
        auto = getattr(objective, "auto_group_size", None)
        size = auto() if callable(auto) else DEFAULT_GROUP_SIZE
    groups = _groups(points, size)
    for group in groups:
        try:
            lv, av = many(torch.stack(group))
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
