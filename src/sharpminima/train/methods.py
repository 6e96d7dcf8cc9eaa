"""Training methods: how one step turns a batch into an update.

A method is a factory ``make(config) -> StepFn`` where
``step(model, optimizer, inputs, targets) -> loss`` performs one update and returns the
batch's mean loss as a detached 0-dim tensor (no host synchronisation). The training loop
calls only this interface, so SAM, conservative (proximal) steps, ghost BatchNorm and the
like plug in here without a branch in the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError

StepFn = Callable[[nn.Module, torch.optim.Optimizer, Tensor, Tensor], Tensor]
MethodFactory = Callable[[TrainConfig], StepFn]


def plain(config: TrainConfig) -> StepFn:
    """One optimizer step on the mean cross-entropy of the batch."""

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


METHODS: dict[str, MethodFactory] = {"plain": plain}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make ``factory`` available as ``TrainConfig(method=name)``."""
    METHODS[name] = factory


def make_step(config: TrainConfig) -> StepFn:
    """Return the step function of ``config.method``.

    Raises:
        ConfigError: For an unknown method name.
    """
    try:
        return METHODS[config.method](config)
    except KeyError:
        raise ConfigError(
            f"unknown training method {config.method!r}; choose one of {', '.join(sorted(METHODS))}"
        ) from None
