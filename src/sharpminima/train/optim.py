"""Optimizer registry: a name in the config picks a factory; the loop never branches on it.

Registered (see :data:`OPTIMIZERS`): ``adam``, ``adamw``, ``sgd``, ``nesterov``,
``adagrad``, ``lars``, ``lamb``. SAM and the other step methods wrap any of them (they
live in :mod:`sharpminima.train.methods`, not here).

Adam and AdamW use torch's fused kernel (``fused=True``) where it exists (CPU and CUDA,
floating-point parameters): one pass over the weights instead of a Python loop of
elementwise kernels per parameter. It is deterministic and agrees with the unfused update
to within float32 rounding; see :mod:`sharpminima.train.perf`. The flag is saved in the
optimizer's ``state_dict``, so a resumed run keeps the implementation it started with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.train.layerwise import LAMB, LARS
from sharpminima.train.perf import can_fuse
from sharpminima.train.step_parts import BOOL, POSITIVE, Check

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


def _nesterov(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    if not c.momentum > 0:
        raise ConfigError(f"optimizer 'nesterov' needs momentum > 0, got {c.momentum}")
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=True)


def _adagrad(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=c.lr, weight_decay=c.weight_decay)


def _lars(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    args = optimizer_options(c)
    return LARS(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
        trust_coefficient=args["trust_coefficient"], exclude_1d=args["exclude_1d"],
    )


def _lamb(params: Iterable[nn.Parameter], c: TrainConfig) -> torch.optim.Optimizer:
    args = optimizer_options(c)
    return LAMB(
        params, lr=c.lr, betas=c.betas, eps=c.adam_eps, weight_decay=c.weight_decay,
        exclude_1d=args["exclude_1d"], weight_norm_max=args["weight_norm_max"],
    )


#: Registered optimizers; each reads the shared config fields it uses (``lr`` always):
#:
#: * ``adam``, ``adamw``: ``betas``, ``adam_eps``, ``weight_decay`` (fused kernel).
#: * ``sgd``, ``nesterov``: ``momentum``, ``weight_decay`` (coupled L2).
#: * ``adagrad``: ``weight_decay``.
#: * ``lars`` (:class:`~sharpminima.train.layerwise.LARS`): ``momentum``,
#:   ``weight_decay``; options ``trust_coefficient`` (1e-3), ``exclude_1d`` (True).
#: * ``lamb`` (:class:`~sharpminima.train.layerwise.LAMB`): ``betas``, ``adam_eps``,
#:   ``weight_decay`` (decoupled); options ``exclude_1d`` (True), ``weight_norm_max``
#:   (None: phi is the identity).
#:
#: Options are read from ``config.optimizer_args`` (sorted ``(name, value)`` pairs) once
#: the config has that field; until then the defaults apply.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
    "nesterov": _nesterov,
    "adagrad": _adagrad,
    "lars": _lars,
    "lamb": _lamb,
}

#: Each optimizer's options and their defaults (none for those not listed).
OPTIMIZER_ARGS: dict[str, dict[str, Any]] = {
    "lars": {"trust_coefficient": 1e-3, "exclude_1d": True},
    "lamb": {"exclude_1d": True, "weight_norm_max": None},
}

#: Optimizers whose update is elementwise with a per-tensor step count: one optimizer over
#: stacked ``(K, ...)`` tensors updates each of K trials exactly as its own would, so
#: vectorised trials can use them (:mod:`sharpminima.train.vectorized`).
ELEMENTWISE: set[str] = {"adam", "adamw", "sgd", "nesterov", "adagrad"}

#: Checks of option values: ``(accepts, description)``.
OPTIMIZER_CHECKS: dict[str, Check] = {
    "trust_coefficient": POSITIVE,
    "exclude_1d": BOOL,
    "weight_norm_max": (lambda v: v is None or POSITIVE[0](v), "a positive number or none"),
}


def optimizer_options(config: Any) -> dict[str, Any]:
    """Return ``config.optimizer``'s options: its defaults updated by ``config.optimizer_args``.

    Raises:
        ConfigError: For an option the optimizer does not take or an invalid value.
    """
    name = config.optimizer
    defaults = OPTIMIZER_ARGS.get(name, {})
    given = dict(getattr(config, "optimizer_args", ()))
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for optimizer {name!r}; it takes {sorted(defaults)}")
    options = {**defaults, **given}
    for key, value in options.items():
        accepts, description = OPTIMIZER_CHECKS.get(key, (lambda v: True, ""))
        if not accepts(value):
            raise ConfigError(f"optimizer {name!r} option {key!r} must be {description}, got {value!r}")
    return options


def register_optimizer(
    name: str, factory: OptimizerFactory, options: dict[str, Any] | None = None, *, elementwise: bool = False
) -> None:
    """Make ``factory`` available as ``TrainConfig(optimizer=name)``.

    Args:
        name: The config's name for it.
        factory: ``(params, config) -> Optimizer``; it may call :func:`optimizer_options`.
        options: The options it takes, with their defaults.
        elementwise: Whether its update is elementwise with a per-tensor step count (then
            vectorised trials may use it).
    """
    OPTIMIZERS[name] = factory
    OPTIMIZER_ARGS[name] = dict(options or {})
    if elementwise:
        ELEMENTWISE.add(name)
    else:
        ELEMENTWISE.discard(name)


def is_elementwise(name: str) -> bool:
    """Whether optimizer ``name`` can update stacked trials (see :data:`ELEMENTWISE`)."""
    return name in ELEMENTWISE


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Build the optimizer named by ``config.optimizer``.

    Raises:
        ConfigError: For an unknown optimizer name or option.
    """
    try:
        factory = OPTIMIZERS[config.optimizer]
    except KeyError:
        raise ConfigError(
            f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(sorted(OPTIMIZERS))}"
        ) from None
    optimizer_options(config)  # rejects options an optimizer does not take
    return factory(params, config)
