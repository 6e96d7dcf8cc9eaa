"""The training loop: one function, ``train(config) -> Run``.

The step itself lives in :mod:`sharpminima.train.methods`; optimizers in
:mod:`sharpminima.train.optim`; batch-size and learning-rate schedules (pure functions of
the epoch and step) in :mod:`sharpminima.train.schedules`; augmentation in
:mod:`sharpminima.data.augment`; initialisation schemes in :mod:`sharpminima.models.init`.
This module only orders the work: seed, build, initialise, resume, epochs of seeded
shuffles over data held on the device, evaluation, checkpoint, stop. Each epoch's metrics
record its batch size, mean batch size, the global step count and the last learning rate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig
from sharpminima.data.augment import make_augment
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError
from sharpminima.models.init import initialize
from sharpminima.train.checkpointing import RunFiles
from sharpminima.train.methods import make_step
from sharpminima.train.optim import OPTIMIZERS, make_optimizer, optimizer_options
from sharpminima.train.parallel import open_run_files, parallel_evaluate, parallel_step  # torchrun/DDP
from sharpminima.train.perf import cuda_flags_restored, prepare
from sharpminima.train.run import Run
from sharpminima.train.schedules import EpochContext, make_schedule, set_lr, steps_done

log = logging.getLogger(__name__)

#: ``progress(event, info)``: events ``"start"`` (``total_steps``, ``done_steps``),
#: ``"step"`` and ``"epoch"`` (the epoch's metrics).
Progress = Callable[[str, dict[str, Any]], None]


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
    """Return one epoch's batches of a seeded random permutation (the last may be smaller)."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(num, generator=gen).to(device)
    return list(torch.split(perm, batch_size))


def build_model(config: TrainConfig, data: Dataset) -> nn.Module:
    """Build the configured network for the dataset's input shape and classes."""
    from sharpminima.models import build

    return build(config.net, data.input_shape, data.num_classes)


def train(
    config: TrainConfig,
    *,
    dataset: Dataset | None = None,
    store: Any = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
) -> Run:
    """Train one run as configured and return it.

    With a ``store`` the run is recorded there, checkpointed after every epoch and resumed
    from its last checkpoint if it was interrupted; asking for a config that is already
    done (or diverged) returns the stored run without training. Same seed, same results on
    CPU, with or without interruptions.

    Args:
        config: The run's configuration.
        dataset: The data; loaded from ``config.dataset`` (with its limits) if None.
        store: A :class:`sharpminima.store.Store`, or None to train in memory only.
        device: Where to train (default: CUDA if available, else CPU).
        progress: Optional callback, see :data:`Progress`.
        model_factory: Builds the network instead of the registry (bring your own model);
            called after seeding, so initial weights still follow ``config.seed``.

    Returns:
        The :class:`Run` with its final model and per-epoch history.

    Raises:
        ConfigError: If the batch size exceeds the training set, or for unknown or invalid
            schedule, augmentation or initialisation options.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dataset is None:
        from sharpminima.data import load

        dataset = load(config.dataset, source=config.data_source)
    data = dataset.subset(config.train_limit, config.test_limit).to(dev)
    if config.batch_size > data.num_train:
        raise ConfigError(f"batch size {config.batch_size} exceeds the {data.num_train} training samples")
    _check_options(config, data)
    files = open_run_files(store, config)  # under torchrun: rank 0 writes, the others follow
    if files.finished():
        return files.load_run(lambda: _fresh_model(config, data, model_factory).to(dev))
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), cuda_flags_restored():
        return _train(config, data, files, dev, progress, model_factory)


def _check_options(config: TrainConfig, data: Dataset) -> None:
    """Build every configured component once, so bad options fail before the store."""
    make_step(config)
    optimizer_options(config)
    if config.optimizer not in OPTIMIZERS:
        make_optimizer([], config)  # raises the one-line unknown-optimizer error
    if _uses_ghost_bn(config) and torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            raise ConfigError(
                "ghost BatchNorm (method ghost_bn or option ghost_batch_size) is not supported "
                "under torchrun: BatchNorm is synchronised over ranks; train it in one process"
            )
    make_schedule(config, data.num_train)
    make_augment(config.augment, config.augment_args, data.input_shape)
    initialize(nn.Sequential(), config.init, config.init_scale)


def _uses_ghost_bn(config: TrainConfig) -> bool:
    return config.method == "ghost_bn" or dict(config.method_args).get("ghost_batch_size") is not None


def _fresh_model(
    config: TrainConfig, data: Dataset, model_factory: Callable[[], nn.Module] | None
) -> nn.Module:
    torch.manual_seed(config.seed)
    model = model_factory() if model_factory is not None else build_model(config, data)
    return initialize(model, config.init, config.init_scale)


def _train(
    config: TrainConfig,
    data: Dataset,
    files: RunFiles,
    dev: torch.device,
    progress: Progress | None,
    model_factory: Callable[[], nn.Module] | None,
) -> Run:
    model = _fresh_model(config, data, model_factory).to(dev)
    if config.init_from:
        model.load_state_dict(files.weights_of(config.init_from))
    init_state = files.initial_weights(model)
    model, data = prepare(model, data, dev)  # CUDA fast path (TF32, channels_last); no-op on CPU
    opt = make_optimizer(model.parameters(), config)
    step = parallel_step(make_step(config), model)  # DDP on this rank's shard under torchrun
    schedule = make_schedule(config, data.num_train)
    augment = make_augment(config.augment, config.augment_args, data.input_shape)
    stop, history = StopState(), []
    start_epoch = files.resume(model, opt, stop, history)
    n = data.num_train
    num_steps = steps_done(history, n, config.batch_size)
    steps_per_epoch = math.ceil(n / config.batch_size)
    if progress:
        progress(
            "start",
            {"total_steps": steps_per_epoch * config.epochs, "done_steps": num_steps},
        )
    files.mark_running()
    status, message = "done", None
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            t0 = time.perf_counter()
            plan = schedule.plan(epoch, EpochContext(model, data, history))  # batch size, lr factor
            torch.manual_seed(epoch_seed(config.seed, epoch))  # dropout
            model.train()
            augment_batch = augment.for_epoch(epoch_seed(config.seed, epoch))
            loss_sum, first_step = torch.zeros((), device=dev), num_steps
            for idx in batch_indices(n, plan.batch_size, config.seed, epoch, dev):
                set_lr(opt, schedule.lr(num_steps, epoch, plan), config.lr)
                xb = augment_batch(data.x_train[idx])
                loss_sum += step(model, opt, xb, data.y_train[idx]) * idx.numel()
                num_steps += 1
                if progress:
                    progress("step", {})
            epoch_loss = float(loss_sum) / n  # waits for the epoch's last step on a GPU
            seconds = time.perf_counter() - t0
            train_loss, train_acc = parallel_evaluate(model, data.x_train, data.y_train, config.eval_chunk)
            test_loss, test_acc = parallel_evaluate(model, data.x_test, data.y_test, config.eval_chunk)
            metrics = {
                "epoch": epoch,
                "epoch_loss": epoch_loss,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds,
                "batch_size": plan.batch_size,
                "batch_size_mean": n / (num_steps - first_step),
                "steps": num_steps,
                "lr_end": float(opt.param_groups[0]["lr"]),
                **plan.metrics,
            }
            history.append(metrics)
            if not (math.isfinite(metrics["epoch_loss"]) and math.isfinite(train_loss)):
                status = "diverged"
                message = (
                    f"training loss became {metrics['epoch_loss']} in epoch {epoch}; "
                    f"lower the learning rate (now {config.lr})"
                )
                files.end_epoch(epoch, metrics, model, opt, stop, save=False)
                break
            stop.update(train_loss, config.min_improvement)
            files.end_epoch(epoch, metrics, model, opt, stop, save=True)
            if progress:
                progress("epoch", metrics)
            if config.stop == "plateau" and stop.bad_epochs >= config.patience:
                log.info("run %s: training loss plateaued after epoch %d", files.run_id, epoch)
                break
    except BaseException as exc:
        files.finish("failed", f"{type(exc).__name__}: {exc}", model, history)
        raise
    files.finish(status, message, model, history)
    return Run(files.run_id, config, status, message, history, model, init_state, files.root)
