"""Optimizer registry: a name in the config picks a factory; the loop never branches on it.

Later work adds optimizers (LARS, LAMB, SAM wrappers...) by registering a factory here.

Adam and AdamW use torch's fused kernel (``fused=True``) where it exists (CPU and CUDA,
floating-point parameters): one pass over the weights instead of a Python loop of
elementwise kernels per parameter. It is deterministic and agrees with the unfused update
to within float32 rounding; see :mod:`sharpminima.train.perf`. The flag is saved in the
optimizer's ``state_dict``, so a resumed run keeps the implementation it started with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.train.perf import can_fuse

OptimizerFactory = Callable[[Iterable[nn.Parameter], TrainConfig], torch.optim.Optimizer]


def _adam(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.Adam(
        params, lr=c.lr, betas=c.betas, eps=c.adam_eps, weight_decay=c.weight_decay,
        fused=can_fuse(params) or None,
    )


def _adamw(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.AdamW(
        params, lr=c.lr, betas=c.betas, eps=c.adam_eps, weight_decay=c.weight_decay,
        fused=can_fuse(params) or None,
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
