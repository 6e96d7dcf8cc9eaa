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
from sharpminima.train.perf import compiled

StepFn = Callable[[nn.Module, torch.optim.Optimizer, Tensor, Tensor], Tensor]
MethodFactory = Callable[[TrainConfig], StepFn]


def _batch_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
    """Mean cross-entropy of the batch: ``(1/B) sum_i -log softmax(model(x_i))[y_i]``."""
    return F.cross_entropy(model(xb), yb)


#: Options of the ``plain`` method (``config.method_args``) and their defaults.
PLAIN_ARGS: dict[str, object] = {"compile": False}


def plain(config: TrainConfig) -> StepFn:
    """One optimizer step on the mean cross-entropy of the batch.

    ``config.method_args`` may set ``("compile", True)`` to run forward, loss and backward
    through ``torch.compile`` (see :mod:`sharpminima.train.perf` for what it costs and
    gains). Being a config field, the choice is part of the run's identity, as it should
    be: compiled kernels round differently from eager ones.

    Raises:
        ConfigError: For an unknown option or a non-boolean ``compile``.
    """
    args = {**PLAIN_ARGS, **dict(config.method_args)}
    unknown = sorted(set(args) - set(PLAIN_ARGS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} for method 'plain'; it takes {sorted(PLAIN_ARGS)}"
        )
    if not isinstance(args["compile"], bool):
        raise ConfigError(f"method option 'compile' must be true or false, got {args['compile']!r}")
    batch_loss = compiled(_batch_loss) if args["compile"] else _batch_loss

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, xb, yb)
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
