"""Pieces every step method shares: the batch loss (with ghost BatchNorm), options, buffers.

Kept apart from :mod:`sharpminima.train.methods` (the registry) so that method modules
(:mod:`~sharpminima.train.sam`, :mod:`~sharpminima.train.remedy_steps`) import these and the
registry imports them, never the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.losses import CrossEntropy, Loss, resolve_loss

StepFn = Callable[[nn.Module, torch.optim.Optimizer, Tensor, Tensor], Tensor]
MethodFactory = Callable[[TrainConfig], StepFn]

#: The default loss of a step.
CROSS_ENTROPY = CrossEntropy()

#: An option check: ``(accepts(value), what a valid value is)``.
Check = tuple[Callable[[Any], bool], str]


def training_loss(config: TrainConfig) -> Loss:
    """The loss adapter ``config.loss`` names (cross-entropy by default).

    Raises:
        ConfigError: For an unknown loss or one that reads dict batches (training batches
            are ``(inputs, targets)``).
    """
    criterion = resolve_loss(config.loss)
    if criterion.name == "output":
        raise ConfigError(
            "loss 'output' (the model's own .loss from dict batches) cannot train on (inputs, targets) "
            "batches; use cross_entropy, mse or module:function"
        )
    return criterion


def batch_loss(
    model: nn.Module,
    xb: Tensor,
    yb: Tensor,
    ghost_batch_size: int | None = None,
    criterion: Loss | None = None,
) -> Tensor:
    """Mean loss of a batch (cross-entropy unless ``criterion`` says), optionally with ghost BatchNorm.

    Without ``ghost_batch_size`` (or when it is at least the batch size) this is
    ``criterion(model, (xb, yb))``, for cross-entropy
    ``(1/B) sum_i -log softmax(model(x_i))[y_i]``, from one forward pass. With it, the batch
    is split into ``m = ceil(B / ghost_batch_size)`` consecutive virtual batches
    ``V_1, ..., V_m`` of near-equal size (at most ``ghost_batch_size``; sizes differ by at
    most one, so no piece is a tiny remainder) and each gets its own forward pass, so every BatchNorm
    layer normalises a virtual batch by that batch's statistics and updates its running
    statistics once per virtual batch (Hoffer et al. 2017, "Train longer, generalize
    better", ghost batch normalization). The loss is the count-weighted mean
    ``sum_j sum_{i in V_j} l_i / sum_j m_j`` (``m_j`` the terms of piece ``j``: samples,
    or tokens), i.e. the same normalisation as without ghosts.

    Args:
        model: The network (in training mode for BatchNorm to use batch statistics).
        xb: Inputs ``(B, ...)``.
        yb: Targets ``(B, ...)``.
        ghost_batch_size: Virtual batch size, or None for one forward over the batch.
        criterion: The loss adapter (default: cross-entropy).

    Returns:
        The 0-dim mean loss, attached to the graph.
    """
    if criterion is None:
        criterion = CROSS_ENTROPY
    if ghost_batch_size is None or ghost_batch_size >= len(xb):
        return criterion(model, (xb, yb))
    # ceil(B/g) near-equal pieces (sizes differ by at most 1), so no virtual batch is a
    # tiny remainder (a single sample would make BatchNorm's batch statistics undefined).
    pieces = math.ceil(len(xb) / ghost_batch_size)
    parts = [(xv, yv) for xv, yv in zip(xb.tensor_split(pieces), yb.tensor_split(pieces), strict=True)]
    total = sum(criterion.loss_sum(model, part)[0] for part in parts)
    count = sum(criterion.count(part) for part in parts)
    return total / count  # type: ignore[operator]


@contextmanager
def buffers_restored(model: nn.Module) -> Iterator[None]:
    """Undo every buffer change (BatchNorm running statistics) made inside the block.

    Methods with several forward passes per step (SAM's second pass at ``w + e``,
    adversarial training's pass on perturbed inputs) let only the first pass update the
    running statistics, so they track the data at the iterate, as a plain step would.
    Restore happens on leaving the block; put the backward pass inside it, because
    writing a buffer that the graph saved before backward is an autograd error.
    """
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (those requiring gradients)."""
    return [p for p in model.parameters() if p.requires_grad]


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


POSITIVE: Check = (lambda v: is_real(v) and v > 0, "a positive number")
NONNEGATIVE: Check = (lambda v: is_real(v) and v >= 0, "a non-negative number")
FRACTION: Check = (lambda v: is_real(v) and 0 <= v <= 1, "a number in [0, 1]")
POSITIVE_INT: Check = (
    lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "a positive integer",
)
BOOL: Check = (lambda v: isinstance(v, bool), "true or false")
GHOST: Check = (lambda v: v is None or POSITIVE_INT[0](v), "a positive integer or none")


def method_options(
    config: TrainConfig, method: str, defaults: dict[str, Any], checks: dict[str, Check]
) -> dict[str, Any]:
    """Merge ``config.method_args`` into a method's defaults and validate them.

    Args:
        config: The run's config.
        method: The method's name (for messages).
        defaults: Every option the method takes, with its default.
        checks: For some options, ``(accepts, description)``.

    Returns:
        The options, defaults filled in.

    Raises:
        ConfigError: For an unknown option or a value its check rejects.
    """
    given = dict(config.method_args)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method {method!r}; it takes {sorted(defaults)}")
    options = {**defaults, **given}
    for name, (accepts, description) in checks.items():
        if not accepts(options[name]):
            raise ConfigError(
                f"method {method!r} option {name!r} must be {description}, got {options[name]!r}"
            )
    return options
