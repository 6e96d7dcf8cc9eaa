"""Building a run's pieces: its network, its seeded data order, its stopping rule.

Shared by the training loop (:mod:`sharpminima.train.loop`), the vectorised trials
(:mod:`sharpminima.train.vectorized`) and the store's loader of finished runs
(:func:`sharpminima.train.checkpointing.load_run`), so that none of them imports another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig
from sharpminima.data.augment import make_augment
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError
from sharpminima.models.init import initialize
from sharpminima.train.methods import make_step
from sharpminima.train.optim import OPTIMIZERS, make_optimizer, optimizer_options
from sharpminima.train.schedules import make_schedule
from sharpminima.train.step_parts import training_loss

#: ``factory() -> nn.Module``: a network built instead of the registry's.
ModelFactory = Callable[[], nn.Module]


@dataclass
class StopState:
    """Plateau stopping rule state: best training loss so far and epochs since it improved."""

    best: float = math.inf
    bad_epochs: int = 0

    def update(self, loss: float, min_improvement: float) -> None:
        """Count an epoch as improving if ``loss < best * (1 - min_improvement)``."""
        if loss < self.best * (1.0 - min_improvement):
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's shuffle and dropout: a pure function of (seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def batch_indices(num: int, batch_size: int, seed: int, epoch: int, device: torch.device) -> list[Tensor]:
    """Return one epoch's batches of a seeded random permutation (the last may be smaller).

    A last batch of a single sample (``num % batch_size == 1``, ``batch_size > 1``) joins
    the batch before it: BatchNorm cannot normalise one sample ("Expected more than 1
    value per channel"), and one sample is no batch-size ``B`` step anyway.
    """
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(num, generator=gen).to(device)
    batches = list(torch.split(perm, batch_size))
    if batch_size > 1 and len(batches) > 1 and batches[-1].numel() == 1:
        batches[-2:] = [perm[-(batches[-2].numel() + 1) :]]
    return batches


def build_model(config: TrainConfig, data: Dataset) -> nn.Module:
    """Build the configured network for the dataset's input shape and classes."""
    from sharpminima.models import build

    return build(config.net, data.input_shape, data.num_classes)


def fresh_model(config: TrainConfig, data: Dataset, model_factory: ModelFactory | None) -> nn.Module:
    """The run's initial network: seeded with ``config.seed``, built, initialised."""
    torch.manual_seed(config.seed)
    model = model_factory() if model_factory is not None else build_model(config, data)
    return initialize(model, config.init, config.init_scale)


def uses_ghost_bn(config: TrainConfig) -> bool:
    """Whether the config's method normalises ghost batches."""
    return config.method == "ghost_bn" or dict(config.method_args).get("ghost_batch_size") is not None


def check_options(config: TrainConfig, data: Dataset) -> None:
    """Build every configured component once, so bad options fail before the store.

    Raises:
        ConfigError: For a batch larger than the data, an unknown or invalid method,
            optimizer, loss, schedule, augmentation or initialisation, or ghost BatchNorm
            under torchrun.
    """
    if config.batch_size > data.num_train:
        raise ConfigError(f"batch size {config.batch_size} exceeds the {data.num_train} training samples")
    training_loss(config)
    make_step(config)
    optimizer_options(config)
    if config.optimizer not in OPTIMIZERS:
        make_optimizer([], config)  # raises the one-line unknown-optimizer error
    if uses_ghost_bn(config) and torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            raise ConfigError(
                "ghost BatchNorm (method ghost_bn or option ghost_batch_size) is not supported "
                "under torchrun: BatchNorm is synchronised over ranks; train it in one process"
            )
    make_schedule(config, data.num_train)
    make_augment(config.augment, config.augment_args, data.input_shape)
    initialize(nn.Sequential(), config.init, config.init_scale)
