"""Batch-size and learning-rate schedules: pure functions of the epoch and the step.

A run's :class:`Schedule` answers two questions, and the training loop asks nothing else:

* :meth:`Schedule.plan` (once per epoch): the epoch's batch size ``B_e`` (the seeded
  permutation of the ``N`` training samples is cut into ``ceil(N / B_e)`` batches, the last
  one smaller, so every epoch still covers every sample once), a factor on the learning rate
  that the batch schedule takes over (Smith et al.'s schedule), and metrics to record;
* :meth:`Schedule.lr` (once per step): the learning rate of global step ``t`` (0-based,
  counted over all epochs) in epoch ``e`` (1-based) with batch size ``B``.

Both are pure functions of ``(t, e)``, the config and, for the adaptive batch rule only, the
weights at the start of the epoch and the previous epoch's recorded batch size. The loop
records ``steps`` and ``batch_size`` in every epoch's metrics; those rows are restored on
resume, so a resumed run recomputes exactly the schedule of an uninterrupted one and the
checkpoint needs no extra state.

Batch schedules (``config.batch_schedule``; ``B_0 = config.batch_size``, ``N`` training
samples, ``cap = min(max_batch, N)``):

* ``constant``: ``B_e = B_0``.
* ``step`` (``factor`` = 2, ``every`` = 10, ``max_batch``):
  ``B_e = min(B_0 * factor^floor((e - 1) / every), cap)``.
* ``linear`` (``final``, ``over`` = ``config.epochs``):
  ``B_e = round(B_0 + (final - B_0) * min(1, (e - 1) / (over - 1)))``.
* ``exponential`` (``rate``, ``max_batch``): ``B_e = min(round(B_0 * rate^(e - 1)), cap)``.
* ``increase`` (``milestones``, ``factor`` = 5, ``max_batch``), Smith et al. 2018, "Don't
  decay the learning rate, increase the batch size": at each milestone epoch ``m`` where one
  would divide the learning rate by ``factor`` (from epoch ``m + 1`` on), multiply the batch
  by it instead while the batch stays within ``cap``; past that, divide the learning rate.
  With ``k`` milestones passed and ``j`` the most multiplications that fit,
  ``B_e = round(B_0 * factor^min(k, j))`` and the learning rate carries
  ``factor^-(k - min(k, j))``.
* ``adaptive`` (``scale`` = 1, ``every`` = 1, ``max_batch``, ``min_batch`` = ``B_0``,
  ``monotone`` = true, ``batch_small`` = 64, ``batch_big`` = 1024, ``repeats`` = 10): every
  ``every`` epochs, measure the simple gradient noise scale
  ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al. 2018) at the epoch's starting weights
  with the two-batch estimator of
  :func:`sharpminima.landscape.noise.gradient_noise_scale` (BatchNorm in batch mode,
  seeded by ``(seed, epoch)``), and set ``B_e = clip(round(scale * B_simple), min_batch,
  cap)``, never below the previous epoch's batch when ``monotone``. A non-finite or
  negative estimate (noise swamps the signal) counts as ``cap``. Cost per measurement:
  ``repeats * (batch_small + batch_big)`` per-sample gradients.

Learning-rate schedules (``config.lr_schedule``; ``lr_0 = config.lr``); all take the options
``base_batch`` (``B_ref`` = 256, the paper's small batch), ``warmup_steps`` (``W`` = 0),
``milestones`` (epochs; default none) and ``gamma`` (0.1):

* ``constant``: ``lr = lr_0``; ``linear``: ``lr = lr_0 B / B_ref`` (Goyal et al. 2017);
  ``sqrt``: ``lr = lr_0 sqrt(B / B_ref)`` (Krizhevsky 2014, Hoffer et al. 2017);
  ``step``: as ``constant`` but ``milestones`` are required.
* Each is then multiplied by the linear warm-up ``min(1, (t + 1) / W)`` and by the step
  decay ``gamma^(number of milestones m < e)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sharpminima.config import SB_BATCH_SIZE, TrainConfig
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError

_REQUIRED = object()


@dataclass(frozen=True)
class EpochContext:
    """What a batch rule may look at when it plans an epoch.

    Attributes:
        model: The network at the start of the epoch (read only).
        data: The training data.
        history: Metrics of the finished epochs (``batch_size`` and ``steps`` included).
    """

    model: nn.Module
    data: Dataset
    history: Sequence[dict[str, Any]]


@dataclass(frozen=True)
class BatchPlan:
    """One epoch's batch size, the learning-rate factor the batch rule sets, and metrics."""

    batch_size: int
    lr_factor: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)


BatchRule = Callable[[int, EpochContext], BatchPlan]
#: ``factory(config, options, num_train) -> rule``; ``options`` holds every known option.
BatchFactory = Callable[[TrainConfig, dict[str, Any], int], BatchRule]
#: ``rule(step, epoch, batch_size) -> factor on config.lr``.
LrRule = Callable[[int, int, int], float]
LrFactory = Callable[[TrainConfig, dict[str, Any]], LrRule]


def _options(
    kind: str, name: str, given: tuple[tuple[str, Any], ...], defaults: dict[str, Any]
) -> dict[str, Any]:
    """Merge ``given`` options over ``defaults``.

    Raises:
        ConfigError: For an unknown option or a required one that is missing.
    """
    out = {**defaults, **dict(given)}
    unknown = sorted(set(out) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {kind} {name!r}; it takes {sorted(defaults)}")
    missing = sorted(k for k, v in out.items() if v is _REQUIRED)
    if missing:
        raise ConfigError(f"{kind} {name!r} needs option(s) {missing}")
    return out


def _positive(kind: str, name: str, value: Any, *, integer: bool = False, above_one: bool = False) -> None:
    """Check that an option is a positive (integer, or > 1) number.

    Raises:
        ConfigError: If it is not.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and value > (1 if above_one else 0) and (not integer or float(value).is_integer())
    if not ok:
        what = "an integer > 0" if integer else ("a number > 1" if above_one else "a number > 0")
        raise ConfigError(f"{kind} option {name!r} must be {what}, got {value!r}")


def _milestones(kind: str, value: Any) -> tuple[int, ...]:
    """Return sorted milestone epochs.

    Raises:
        ConfigError: If ``value`` is not a sequence of positive integers.
    """
    if not isinstance(value, (tuple, list)):
        raise ConfigError(f"{kind} option 'milestones' must be a list of epochs, got {value!r}")
    for m in value:
        _positive(kind, "milestones", m, integer=True)
    return tuple(sorted(int(m) for m in value))


def _cap(opts: dict[str, Any], num_train: int) -> int:
    if opts["max_batch"] is None:
        return num_train
    _positive("batch schedule", "max_batch", opts["max_batch"], integer=True)
    return min(int(opts["max_batch"]), num_train)


# ---------------------------------------------------------------- batch rules


def _constant_batch(config: TrainConfig, opts: dict[str, Any], num_train: int) -> BatchRule:
    return lambda epoch, ctx: BatchPlan(config.batch_size)


def _step_batch(config: TrainConfig, opts: dict[str, Any], num_train: int) -> BatchRule:
    _positive("batch schedule", "factor", opts["factor"], above_one=True)
    _positive("batch schedule", "every", opts["every"], integer=True)
    cap, factor, every = _cap(opts, num_train), opts["factor"], int(opts["every"])
    return lambda epoch, ctx: BatchPlan(min(round(config.batch_size * factor ** ((epoch - 1) // every)), cap))


def _linear_batch(config: TrainConfig, opts: dict[str, Any], num_train: int) -> BatchRule:
    _positive("batch schedule", "final", opts["final"], integer=True)
    over = config.epochs if opts["over"] is None else opts["over"]
    _positive("batch schedule", "over", over, integer=True)
    b0, final = config.batch_size, min(int(opts["final"]), num_train)

    def rule(epoch: int, ctx: EpochContext) -> BatchPlan:
        frac = min(1.0, (epoch - 1) / max(1, int(over) - 1))
        return BatchPlan(round(b0 + (final - b0) * frac))

    return rule


def _exponential_batch(config: TrainConfig, opts: dict[str, Any], num_train: int) -> BatchRule:
    _positive("batch schedule", "rate", opts["rate"])
    cap, rate = _cap(opts, num_train), float(opts["rate"])
    return lambda epoch, ctx: BatchPlan(max(1, min(round(config.batch_size * rate ** (epoch - 1)), cap)))


def _increase_batch(config: TrainConfig, opts: dict[str, Any], num_train: int) -> BatchRule:
    milestones = _milestones("batch schedule", opts["milestones"])
    _positive("batch schedule", "factor", opts["factor"], above_one=True)
    cap, factor, b0 = _cap(opts, num_train), opts["factor"], config.batch_size
    fits = 0  # the most batch multiplications that stay within the cap
    while round(b0 * factor ** (fits + 1)) <= cap:
        fits += 1

    def rule(epoch: int, ctx: EpochContext) -> BatchPlan:
        passed = sum(1 for m in milestones if m < epoch)
        grown = min(passed, fits)
        return BatchPlan(round(b0 * factor**grown), float(factor) ** -(passed - grown))

    return rule


def _adaptive_batch(config: TrainConfig, opts: dict[str, Any], num_train: int) -> BatchRule:
    for name in ("every", "batch_small", "batch_big", "repeats"):
        _positive("batch schedule", name, opts[name], integer=True)
    _positive("batch schedule", "scale", opts["scale"])
    low = config.batch_size if opts["min_batch"] is None else opts["min_batch"]
    _positive("batch schedule", "min_batch", low, integer=True)
    cap, every = _cap(opts, num_train), int(opts["every"])
    if not isinstance(opts["monotone"], bool):
        raise ConfigError(f"batch schedule option 'monotone' must be true or false, got {opts['monotone']!r}")
    if low > cap:
        raise ConfigError(f"adaptive batch schedule: min_batch {low} exceeds the cap {cap}")

    def rule(epoch: int, ctx: EpochContext) -> BatchPlan:
        previous = int(ctx.history[-1]["batch_size"]) if ctx.history else None
        if previous is not None and (epoch - 1) % every != 0:
            return BatchPlan(previous)
        noise = measure_noise_scale(ctx.model, ctx.data, config.seed, epoch, opts)
        wanted = cap if not (math.isfinite(noise) and noise > 0) else round(opts["scale"] * noise)
        size = min(max(wanted, int(low)), cap)
        if opts["monotone"] and previous is not None:
            size = max(size, previous)
        return BatchPlan(size, metrics={"noise_scale": noise})

    return rule


def measure_noise_scale(
    model: nn.Module, data: Dataset, seed: int, epoch: int, opts: dict[str, Any]
) -> float:
    """Two-batch estimate of ``B_simple`` at the model's current weights (batch-mode BN).

    The model's parameters, buffers and modes are left as they were.
    """
    from sharpminima.landscape.noise import gradient_noise_scale
    from sharpminima.landscape.objective import ModelObjective

    small, big = int(opts["batch_small"]), int(opts["batch_big"])
    objective = ModelObjective(model, data.x_train, data.y_train, bn_mode="batch", chunk_size=big)
    result = gradient_noise_scale(
        objective,
        method="two_batch",
        batch_small=min(small, big - 1),
        batch_big=big,
        num_repeats=max(2, int(opts["repeats"])),
        seed=seed * 1_000_003 + epoch,
    )
    return float(result.value)


BATCH_SCHEDULES: dict[str, tuple[BatchFactory, dict[str, Any]]] = {
    "constant": (_constant_batch, {}),
    "step": (_step_batch, {"factor": 2, "every": 10, "max_batch": None}),
    "linear": (_linear_batch, {"final": _REQUIRED, "over": None}),
    "exponential": (_exponential_batch, {"rate": _REQUIRED, "max_batch": None}),
    "increase": (_increase_batch, {"milestones": _REQUIRED, "factor": 5, "max_batch": None}),
    "adaptive": (
        _adaptive_batch,
        {
            "scale": 1.0,
            "every": 1,
            "max_batch": None,
            "min_batch": None,
            "monotone": True,
            "batch_small": 64,
            "batch_big": 1024,
            "repeats": 10,
        },
    ),
}


# ---------------------------------------------------------------- learning-rate rules

_LR_DEFAULTS: dict[str, Any] = {
    "base_batch": SB_BATCH_SIZE,
    "warmup_steps": 0,
    "milestones": (),
    "gamma": 0.1,
}


def _lr_rule(scaling: Callable[[float], float], need_milestones: bool = False) -> LrFactory:
    def factory(config: TrainConfig, opts: dict[str, Any]) -> LrRule:
        _positive("lr schedule", "base_batch", opts["base_batch"], integer=True)
        _positive("lr schedule", "gamma", opts["gamma"])
        warmup = opts["warmup_steps"]
        if not (isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0):
            raise ConfigError(f"lr schedule option 'warmup_steps' must be an integer >= 0, got {warmup!r}")
        milestones = _milestones("lr schedule", opts["milestones"])
        if need_milestones and not milestones:
            raise ConfigError(f"lr schedule {config.lr_schedule!r} needs option 'milestones' (epochs)")
        base, gamma = int(opts["base_batch"]), float(opts["gamma"])

        def rule(step: int, epoch: int, batch_size: int) -> float:
            factor = scaling(batch_size / base)
            if warmup:
                factor *= min(1.0, (step + 1) / warmup)
            decays = sum(1 for m in milestones if m < epoch)
            return factor * gamma**decays if decays else factor

        return rule

    return factory


LR_SCHEDULES: dict[str, tuple[LrFactory, dict[str, Any]]] = {
    "constant": (_lr_rule(lambda ratio: 1.0), _LR_DEFAULTS),
    "linear": (_lr_rule(lambda ratio: ratio), _LR_DEFAULTS),
    "sqrt": (_lr_rule(math.sqrt), _LR_DEFAULTS),
    "step": (_lr_rule(lambda ratio: 1.0, need_milestones=True), _LR_DEFAULTS),
}


#: Batch schedules whose plan depends on the run's own state (its model or history), not
#: only on the epoch: trials trained together could not share one batch size.
STATEFUL_BATCH_SCHEDULES: set[str] = {"adaptive"}


def register_batch_schedule(name: str, factory: BatchFactory, defaults: dict[str, Any], *,
                            stateful: bool = True) -> None:
    """Make ``factory`` available as ``TrainConfig(batch_schedule=name)`` with these options.

    Args:
        name: The schedule's name.
        factory: ``(config, options, num_train) -> rule``.
        defaults: Its options and their defaults.
        stateful: Whether its plan reads the run's model or history (the safe default);
            False for a function of the epoch alone.
    """
    BATCH_SCHEDULES[name] = (factory, defaults)
    if stateful:
        STATEFUL_BATCH_SCHEDULES.add(name)
    else:
        STATEFUL_BATCH_SCHEDULES.discard(name)


def shared_across_trials(config: TrainConfig) -> bool:
    """Whether every seed of ``config`` gets the same batch plan each epoch.

    Learning-rate rules are pure functions of (step, epoch, batch size); batch rules are,
    except the stateful ones (:data:`STATEFUL_BATCH_SCHEDULES`).
    """
    return config.batch_schedule not in STATEFUL_BATCH_SCHEDULES


def register_lr_schedule(name: str, factory: LrFactory, defaults: dict[str, Any]) -> None:
    """Make ``factory`` available as ``TrainConfig(lr_schedule=name)`` with these options."""
    LR_SCHEDULES[name] = (factory, defaults)


@dataclass(frozen=True)
class Schedule:
    """A run's batch rule and learning-rate rule (see the module docstring)."""

    lr0: float
    batch_rule: BatchRule
    lr_rule: LrRule

    def plan(self, epoch: int, ctx: EpochContext) -> BatchPlan:
        """Return epoch ``epoch``'s (1-based) batch size, lr factor and metrics."""
        return self.batch_rule(epoch, ctx)

    def lr(self, step: int, epoch: int, plan: BatchPlan) -> float:
        """Learning rate of global step ``step`` (0-based) in ``epoch`` under ``plan``."""
        return self.lr0 * self.lr_rule(step, epoch, plan.batch_size) * plan.lr_factor


def make_schedule(config: TrainConfig, num_train: int) -> Schedule:
    """Build and validate the batch and learning-rate schedules of ``config``.

    Args:
        config: The run's configuration.
        num_train: Training samples ``N`` (caps every batch).

    Raises:
        ConfigError: For an unknown schedule, unknown or invalid options.
    """
    if config.batch_schedule not in BATCH_SCHEDULES:
        choices = ", ".join(sorted(BATCH_SCHEDULES))
        raise ConfigError(f"unknown batch schedule {config.batch_schedule!r}; choose one of {choices}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"unknown lr schedule {config.lr_schedule!r}; choose one of {', '.join(sorted(LR_SCHEDULES))}"
        )
    batch_factory, batch_defaults = BATCH_SCHEDULES[config.batch_schedule]
    lr_factory, lr_defaults = LR_SCHEDULES[config.lr_schedule]
    batch_opts = _options("batch schedule", config.batch_schedule, config.batch_schedule_args, batch_defaults)
    lr_opts = _options("lr schedule", config.lr_schedule, config.lr_schedule_args, lr_defaults)
    return Schedule(config.lr, batch_factory(config, batch_opts, num_train), lr_factory(config, lr_opts))


def set_lr(opt: torch.optim.Optimizer, lr: float, lr0: float) -> None:
    """Set every parameter group's learning rate to ``lr`` times its own ratio to ``lr0``.

    A group created with ``config.lr`` gets exactly ``lr`` (a float set, no tensor work);
    a group created with another rate keeps its proportion.
    """
    for group in opt.param_groups:
        base = group.setdefault("initial_lr", group["lr"])
        group["lr"] = lr if base == lr0 else base * (lr / lr0)


def steps_done(history: Sequence[dict[str, Any]], num_train: int, batch_size: int) -> int:
    """Global steps taken in the finished epochs (from their recorded ``steps``).

    Epoch rows written before steps were recorded count ``ceil(N / batch_size)`` each.
    """
    if not history:
        return 0
    last = history[-1]
    return int(last["steps"]) if "steps" in last else len(history) * math.ceil(num_train / batch_size)
