"""Optimizer registry: a name in the config picks a factory; the loop never branches on it.

Later work adds optimizers (LARS, LAMB, SAM wrappers...) by registering a factory here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError

OptimizerFactory = Callable[[Iterable[nn.Parameter], TrainConfig], torch.optim.Optimizer]


def _adam(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        params, lr=c.lr, betas=c.betas, eps=c.adam_eps, weight_decay=c.weight_decay
    )


def _adamw(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=c.lr, betas=c.betas, eps=c.adam_eps, weight_decay=c.weight_decay
    )


def _sgd(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def _adagrad(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=c.lr, weight_decay=c.weight_decay)


OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
    "adagrad": _adagrad,
}


def register_optimizer(name: str, factory: OptimizerFactory) -> None:
    """Make ``factory`` available as ``TrainConfig(optimizer=name)``."""
    OPTIMIZERS[name] = factory


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Build the optimizer named by ``config.optimizer``.

    Raises:
        ConfigError: For an unknown optimizer name.
    """
    try:
        factory = OPTIMIZERS[config.optimizer]
    except KeyError:
        raise ConfigError(
            f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(sorted(OPTIMIZERS))}"
        ) from None
    return factory(params, config)
