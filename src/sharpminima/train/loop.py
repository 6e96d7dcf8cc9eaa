"""The training loop: one loop for one run or K trials, ``train(config) -> Run``.

The step itself lives in :mod:`sharpminima.train.methods`; optimizers in
:mod:`sharpminima.train.optim`; batch-size and learning-rate schedules (pure functions of
the epoch and step) in :mod:`sharpminima.train.schedules`; augmentation in
:mod:`sharpminima.data.augment`; the loss in :mod:`sharpminima.losses`. This module only
orders the work: seed, build, initialise, resume, epochs of seeded shuffles over data held
on the device, evaluation, checkpoint, stop. Each epoch's metrics record its batch size,
mean batch size, the global step count and the last learning rate.

Who takes the steps is an :class:`Engine`: :class:`SequentialEngine` steps one network
with the configured method (data-parallel under ``torchrun``);
:class:`~sharpminima.train.vectorized.VectorizedEngine` steps K trials' stacked
parameters at once. Everything else (setup, resume, the epoch, metrics, divergence and
stopping rules, checkpoints) is :func:`run_epochs`, the same for both.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from sharpminima.config import TrainConfig
from sharpminima.data.augment import make_augment
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError, SharpMinimaError
from sharpminima.losses import Loss
from sharpminima.train.checkpointing import RunFiles, load_into
from sharpminima.train.methods import make_step
from sharpminima.train.optim import make_optimizer
from sharpminima.train.parallel import open_run_files, parallel_evaluate, parallel_step  # torchrun/DDP
from sharpminima.train.perf import cuda_flags_restored, prepare
from sharpminima.train.run import Run
from sharpminima.train.schedules import EpochContext, make_schedule, set_lr, steps_done
from sharpminima.train.setup import (
    ModelFactory,
    StopState,
    batch_indices,
    build_model,
    check_options,
    epoch_seed,
    fresh_model,
)
from sharpminima.train.step_parts import training_loss
from sharpminima.validation import check_device

__all__ = [
    "Engine",
    "Progress",
    "SequentialEngine",
    "StopState",
    "Trial",
    "batch_indices",
    "build_model",
    "epoch_seed",
    "open_trial",
    "run_epochs",
    "train",
]

log = logging.getLogger(__name__)

#: A run whose full-pass training loss grows past this multiple of the mean loss of its
#: first epoch's steps (or becomes NaN or infinite) has diverged: it is stopped and
#: recorded ``diverged``. That mean sits near the loss at initialisation, so a run that
#: fits its data almost perfectly can fluctuate far below it without tripping the rule;
#: one that blows up passes 100x within a few epochs and would otherwise run on to NaN.
DIVERGENCE_FACTOR = 100.0

#: ``progress(event, info)``: events ``"start"`` (``total_steps``, ``done_steps``,
#: ``run_ids``, ``start_epoch``: the last finished epoch a resumed run starts after),
#: ``"step"`` and ``"epoch"`` (the epoch's metrics).
Progress = Callable[[str, dict[str, Any]], None]


@dataclass
class Trial:
    """One run while it trains: its record and files, network, optimizer, history.

    Attributes:
        config: The run's config.
        files: Its record and checkpoints (:class:`~sharpminima.train.checkpointing.RunFiles`).
        model: Its network (for a vectorised group: the trial's own copy, refreshed each epoch).
        init_state: Its initial weights.
        opt: Its optimizer (None until an engine builds or slices one).
        stop: Its plateau-rule state.
        history: Its epochs' metrics.
        status: ``pending`` while training, then ``done``, ``diverged``, ``failed`` or
            ``interrupted`` (Ctrl-C or SIGTERM: resumed by the next run of the command).
        message: Why it diverged or failed.
    """

    config: TrainConfig
    files: Any
    model: nn.Module
    init_state: dict[str, Tensor]
    opt: torch.optim.Optimizer | None = None
    stop: StopState = field(default_factory=StopState)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "pending"
    message: str | None = None

    def resume(self) -> int:
        """Load the last checkpoint into the model and optimizer; return the last finished epoch."""
        assert self.opt is not None
        return self.files.resume(self.model, self.opt, self.stop, self.history)

    def finish(self, status: str, message: str | None) -> None:
        """Save the final weights and record the end."""
        self.files.finish(status, message, self.model, self.history)
        self.status, self.message = status, message

    def run(self) -> Run:
        """The finished run."""
        return Run(
            self.files.run_id,
            self.config,
            self.status,
            self.message,
            self.history,
            self.model,
            self.init_state,
            self.files.root,
        )


class Engine(Protocol):
    """How a group of trials takes its steps: one network, or K stacked ones."""

    def begin_epoch(self, seeds: list[int], epoch: int) -> None:
        """Seed the epoch's random streams (dropout) and put the networks in training mode."""
        ...

    def zeros(self) -> Tensor:
        """An accumulator of the trials' summed batch losses."""
        ...

    def set_lr(self, lr: float, lr0: float) -> None:
        """Set the learning rate of the coming step."""
        ...

    def step(self, xs: list[Tensor], ys: list[Tensor]) -> Tensor:
        """One update of every trial on its own batch; the batches' mean losses."""
        ...

    def epoch_losses(self, loss_sum: Tensor, num_train: int) -> list[float]:
        """Each trial's mean batch loss over the epoch."""
        ...

    def end_epoch(self) -> None:
        """Bring every trial's network up to date (for evaluation and checkpoints)."""
        ...

    def lr(self) -> float:
        """The last learning rate."""
        ...

    def optimizer(self, k: int) -> Any:
        """Trial ``k``'s optimizer (anything with ``state_dict()``), for its checkpoint."""
        ...

    def evaluate(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int
    ) -> tuple[float, float | None]:
        """Eval-mode mean loss and accuracy of one trial's network."""
        ...

    def keep(self, ks: list[int]) -> None:
        """Go on with trials ``ks`` only (the others stopped)."""
        ...


class SequentialEngine:
    """One network stepped by its configured method (data-parallel under ``torchrun``).

    Args:
        trial: The trial (its model and optimizer).
        dev: The training device.
        criterion: The loss (for evaluation).
    """

    def __init__(self, trial: Trial, dev: torch.device, criterion: Loss) -> None:
        assert trial.opt is not None
        self.trial, self.dev, self.criterion = trial, dev, criterion
        self.model, self.opt = trial.model, trial.opt
        self.take_step = parallel_step(make_step(trial.config), self.model)  # DDP on this rank's shard

    def begin_epoch(self, seeds: list[int], epoch: int) -> None:
        """Seed dropout as the run's (seed, epoch) says; training mode."""
        torch.manual_seed(epoch_seed(seeds[0], epoch))
        self.model.train()

    def zeros(self) -> Tensor:
        """A 0-dim accumulator on the device."""
        return torch.zeros((), device=self.dev)

    def set_lr(self, lr: float, lr0: float) -> None:
        """Set every group's learning rate (see :func:`~sharpminima.train.schedules.set_lr`)."""
        set_lr(self.opt, lr, lr0)

    def step(self, xs: list[Tensor], ys: list[Tensor]) -> Tensor:
        """The method's step on the one batch."""
        return self.take_step(self.model, self.opt, xs[0], ys[0])

    def epoch_losses(self, loss_sum: Tensor, num_train: int) -> list[float]:
        """``[sum / N]`` (waits for the epoch's last step on a GPU)."""
        return [float(loss_sum) / num_train]

    def end_epoch(self) -> None:
        """Nothing to copy: the network is the trial's own."""

    def lr(self) -> float:
        """The first group's learning rate."""
        return float(self.opt.param_groups[0]["lr"])

    def optimizer(self, k: int) -> torch.optim.Optimizer:
        """The optimizer."""
        return self.opt

    def evaluate(
        self, model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int
    ) -> tuple[float, float | None]:
        """Full-data metrics (each rank a shard under torchrun)."""
        return parallel_evaluate(model, inputs, targets, chunk, self.criterion)

    def keep(self, ks: list[int]) -> None:
        """One trial: nothing to drop."""


def train(
    config: TrainConfig,
    *,
    dataset: Dataset | None = None,
    store: Any = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    model_factory: ModelFactory | None = None,
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
            loss, method, schedule, augmentation or initialisation options.
    """
    dev, data = prepare_data(config, dataset, device)
    check_options(config, data)
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), cuda_flags_restored(), fixed_threads(config.num_threads):
        trial = open_trial(config, data, dev, store, model_factory)
        if isinstance(trial, Run):
            return trial
        trial.model, data = prepare(
            trial.model, data, dev
        )  # CUDA fast path (TF32, channels_last); CPU: no-op
        trial.opt = make_optimizer(trial.model.parameters(), config)
        engine = SequentialEngine(trial, dev, training_loss(config))
        start_epoch = trial.resume()
        run_epochs([trial], engine, data, start_epoch, dev, progress)
    return trial.run()


@contextlib.contextmanager
def fixed_threads(num_threads: int) -> Iterator[None]:
    """Train with ``num_threads`` torch intra-op threads, then restore the count.

    CPU kernels split reductions by thread count, so the same run trained with another
    count differs at float rounding; fixing it per run (``TrainConfig.num_threads``)
    makes a run id mean the same weights from ``train``, sweep workers or ``reproduce``.
    """
    before = torch.get_num_threads()
    if before != num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def prepare_data(
    config: TrainConfig, dataset: Dataset | None, device: str | torch.device | None
) -> tuple[torch.device, Dataset]:
    """The training device and the config's data subset on it (loaded if not given)."""
    dev = device if isinstance(device, torch.device) else check_device("device", device)
    if dataset is None:
        from sharpminima.data import load

        dataset = load(config.dataset, source=config.data_source)
    return dev, dataset.subset(config.train_limit, config.test_limit).to(dev)


def open_trial(
    config: TrainConfig, data: Dataset, dev: torch.device, store: Any, model_factory: ModelFactory | None
) -> Trial | Run:
    """The stored run if it is finished, else a :class:`Trial` with its initial network.

    The network is seeded and built, warm-started from ``config.init_from`` if set, and its
    initial weights saved (or, when resuming, reloaded). Under torchrun rank 0 owns the
    record and the other ranks follow (:func:`~sharpminima.train.parallel.open_run_files`).
    """
    # Built and tried before the run's row exists: a factory that fails, a network or loss
    # that does not fit the data, or a warm start that is missing or does not fit, leaves
    # no ``pending`` row.
    model = fresh_model(config, data, model_factory).to(dev)
    probe(model, data, config)
    warm = RunFiles(store, config, "").weights_of(config.init_from) if config.init_from else None
    if warm is not None:
        load_into(model, warm, f"warm start {config.init_from!r}")
    files: RunFiles | Any = open_run_files(store, config)
    if files.finished():
        return files.load_run(lambda: model)  # the final weights replace every tensor
    return Trial(config, files, model, files.initial_weights(model))


def probe(model: nn.Module, data: Dataset, config: TrainConfig) -> None:
    """Try the network and the loss on two training samples; nothing changes.

    Eval mode (no BatchNorm statistics updated, no dropout draw), no backward pass, so the
    run's weights and random streams are exactly as without the probe.

    Raises:
        ConfigError: If the forward pass or the loss raises (a network built for other
            inputs or classes, a user loss that fails), the loss is not a differentiable
            0-dim float tensor, or a BatchNorm network is given batches of one sample.
    """
    if config.batch_size < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            f"network {config.net!r} has BatchNorm, which needs at least 2 samples per batch; "
            f"use --batch-size 2 or more (got {config.batch_size})"
        )
    criterion = training_loss(config)
    was_training = model.training
    model.eval()
    try:
        out = criterion(model, (data.x_train[:2], data.y_train[:2]))
    except SharpMinimaError:
        raise
    except Exception as exc:  # a user's network or loss may raise anything
        text = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"network {config.net!r} with loss {config.loss!r} fails on the {config.dataset!r} training "
            f"data ({type(exc).__name__}: {text}); check its input shape {tuple(data.input_shape)} "
            f"and {data.num_classes} classes"
        ) from None
    finally:
        model.train(was_training)
    if not (isinstance(out, Tensor) and out.dim() == 0 and out.is_floating_point() and out.requires_grad):
        got = f"a {type(out).__name__}" if not isinstance(out, Tensor) else (
            f"a tensor of shape {tuple(out.shape)}, dtype {out.dtype}, requires_grad={out.requires_grad}")
        raise ConfigError(
            f"loss {config.loss!r} returned {got}; it must return the batch's mean loss, a 0-dim "
            "float tensor computed from the model's output"
        )


def run_epochs(
    trials: list[Trial],
    engine: Engine,
    data: Dataset,
    start_epoch: int,
    dev: torch.device,
    progress: Progress | None,
) -> None:
    """Train ``trials`` (one config, different seeds, all after ``start_epoch``) to their ends.

    Each epoch: the batch plan, each trial's seeded permutation and augmentation, the
    engine's steps, then per trial evaluation, metrics, the divergence and stopping
    rules and the checkpoint. A trial that stops is finished and dropped; the rest go on.
    """
    config = trials[0].config
    n = data.num_train
    schedule = make_schedule(config, n)  # constant batch size, a pure function of the epoch, or one trial
    augment = make_augment(config.augment, config.augment_args, data.input_shape)
    num_steps = steps_done(trials[0].history, n, config.batch_size)  # the same for every trial
    run_ids = [t.files.run_id for t in trials]
    if start_epoch:
        log.info("resuming run(s) %s from epoch %d", ", ".join(run_ids), start_epoch)
    if progress:
        progress(
            "start",
            {"total_steps": math.ceil(n / config.batch_size) * config.epochs, "done_steps": num_steps,
             "run_ids": run_ids, "start_epoch": start_epoch},
        )
    for t in trials:
        t.files.mark_running()
    active = list(trials)
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if not active:
                break
            t0 = time.perf_counter()
            lead = active[0]
            plan = schedule.plan(epoch, EpochContext(lead.model, data, lead.history))  # batch size, lr factor
            engine.begin_epoch([t.config.seed for t in active], epoch)
            augments = [augment.for_epoch(epoch_seed(t.config.seed, epoch)) for t in active]
            loss_sum, first_step = engine.zeros(), num_steps
            orders = [batch_indices(n, plan.batch_size, t.config.seed, epoch, dev) for t in active]
            for step_idx in zip(*orders, strict=True):
                engine.set_lr(schedule.lr(num_steps, epoch, plan), config.lr)
                xs = [aug(data.x_train[idx]) for aug, idx in zip(augments, step_idx, strict=True)]
                ys = [data.y_train[idx] for idx in step_idx]
                loss_sum += engine.step(xs, ys) * step_idx[0].numel()
                num_steps += 1
                if progress:
                    progress("step", {})
            epoch_losses = engine.epoch_losses(loss_sum, n)  # waits for the epoch's last step on a GPU
            seconds = (time.perf_counter() - t0) / len(active)
            engine.end_epoch()
            extra = {
                "batch_size": plan.batch_size,
                "batch_size_mean": n / (num_steps - first_step),
                "steps": num_steps,
                "lr_end": engine.lr(),
                **plan.metrics,
            }
            keep = [
                k
                for k, t in enumerate(active)
                if _end_epoch(t, engine, k, epoch, epoch_losses[k], seconds, extra, data, progress)
            ]
            if len(keep) < len(active):
                engine.keep(keep)
                active = [active[k] for k in keep]
    except BaseException as exc:
        # Ctrl-C or SIGTERM (the CLI turns it into KeyboardInterrupt): resumable, not failed.
        interrupted = isinstance(exc, KeyboardInterrupt)
        for t in trials:
            if t.status == "pending":
                t.finish(
                    "interrupted" if interrupted else "failed",
                    "interrupted; rerun the same command to resume" if interrupted
                    else f"{type(exc).__name__}: {exc}",
                )
        raise
    for t in trials:
        if t.status == "pending":
            t.finish("done", None)


def _end_epoch(
    t: Trial,
    engine: Engine,
    k: int,
    epoch: int,
    epoch_loss: float,
    seconds: float,
    extra: dict[str, Any],
    data: Dataset,
    progress: Progress | None,
) -> bool:
    """Evaluate, record and checkpoint one trial's epoch; return whether it trains on."""
    chunk = t.config.eval_chunk
    train_loss, train_acc = engine.evaluate(t.model, data.x_train, data.y_train, chunk)
    test_loss, test_acc = engine.evaluate(t.model, data.x_test, data.y_test, chunk)
    metrics = {
        "epoch": epoch,
        "epoch_loss": epoch_loss,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "seconds": seconds,
        **extra,
    }
    t.history.append(metrics)
    opt = engine.optimizer(k)
    first_loss = t.history[0]["epoch_loss"]  # the mean loss of epoch 1's steps: the level training starts at
    if not (math.isfinite(epoch_loss) and math.isfinite(train_loss)) or (
        train_loss > DIVERGENCE_FACTOR * first_loss > 0
    ):
        t.files.end_epoch(epoch, metrics, t.model, opt, t.stop, save=False)
        worst = epoch_loss if not math.isfinite(epoch_loss) else train_loss
        grown = f" (over {DIVERGENCE_FACTOR:g}x epoch 1's mean {first_loss:.4g})"
        grown = grown if math.isfinite(worst) else ""
        t.finish(
            "diverged",
            f"training loss became {worst:.4g}{grown} in epoch {epoch}; lower the learning rate "
            f"(now {t.config.lr})",
        )
        return False
    t.stop.update(train_loss, t.config.min_improvement)
    t.files.end_epoch(epoch, metrics, t.model, opt, t.stop, save=True)
    if progress:
        progress("epoch", metrics)
    if t.config.stop == "plateau" and t.stop.bad_epochs >= t.config.patience:
        log.info("run %s: training loss plateaued after epoch %d", t.files.run_id, epoch)
        t.finish("done", None)
        return False
    return True
