"""Where training time goes: the torch profiler over a few steps of a configured run.

:func:`profile_training` runs the loop's own step (``make_step(config)``, the registry's
optimizer, the configured augmentation, epoch 1's seeded batches at the configured batch
size; no learning-rate or batch-size schedule) under :mod:`torch.profiler` and writes

* ``PATH.json``: a Chrome trace (open in ``chrome://tracing`` or https://ui.perfetto.dev);
* ``PATH.md``: a short Markdown table of the operators with the most self CPU time (and
  self CUDA time on a GPU), with the settings it was taken with.

Nothing is stored and the caller's global random state is untouched. The first
``warmup`` steps run under the profiler but are not recorded (allocations, lazy
initialisation and, with ``compile``, compilation would dominate them).
"""

from __future__ import annotations

import datetime
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from sharpminima.config import TrainConfig
from sharpminima.data.augment import make_augment
from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError
from sharpminima.train.methods import make_step
from sharpminima.train.optim import make_optimizer
from sharpminima.train.setup import batch_indices, epoch_seed, fresh_model


@dataclass(frozen=True)
class ProfileResult:
    """What :func:`profile_training` wrote and measured.

    Attributes:
        trace: The Chrome trace (``.json``).
        table: The Markdown summary (``.md``).
        steps: Steps recorded (after the warm-up).
        seconds: Wall-clock seconds of the recorded steps.
        top_ops: ``(name, self CPU microseconds)`` of the costliest operators, costliest first.
    """

    trace: Path
    table: Path
    steps: int
    seconds: float
    top_ops: tuple[tuple[str, float], ...]


def profile_training(
    config: TrainConfig,
    path: str | Path,
    *,
    dataset: Dataset | None = None,
    steps: int = 10,
    warmup: int = 2,
    device: str | torch.device | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    row_limit: int = 20,
) -> ProfileResult:
    """Profile ``steps`` training steps of ``config`` and write a trace and a table.

    Args:
        config: The run to profile (network, batch size, optimizer, method).
        path: Output stem; ``PATH.json`` and ``PATH.md`` are written (a ``.json`` or ``.md``
            suffix on ``path`` is replaced). Parent folders are created.
        dataset: The data; loaded from ``config.dataset`` if None.
        steps: Steps recorded (``>= 1``).
        warmup: Steps run first and not recorded (``>= 0``).
        device: Where to train (default: CUDA if available, else CPU).
        model_factory: Builds the network instead of the registry.
        row_limit: Operators listed in the table.

    Returns:
        :class:`ProfileResult`.

    Raises:
        ConfigError: For ``steps < 1``, ``warmup < 0`` or a batch larger than the data.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"profile steps must be a positive integer, got {steps!r}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ConfigError(f"profile warm-up steps must be a nonnegative integer, got {warmup!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dataset is None:
        from sharpminima.data import load

        dataset = load(config.dataset, source=config.data_source)
    data = dataset.subset(config.train_limit, config.test_limit).to(dev)
    if config.batch_size > data.num_train:
        raise ConfigError(f"batch size {config.batch_size} exceeds the {data.num_train} training samples")
    stem = Path(path)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    trace, table = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model = fresh_model(config, data, model_factory).to(dev).train()
        opt = make_optimizer(model.parameters(), config)
        step = make_step(config)
        augment = make_augment(config.augment, config.augment_args, data.input_shape).for_epoch(
            epoch_seed(config.seed, 1))
        batches: list[torch.Tensor] = []
        epoch = 1
        while len(batches) < warmup + steps:
            batches += batch_indices(data.num_train, config.batch_size, config.seed, epoch, dev)
            epoch += 1
        sched = schedule(wait=0, warmup=warmup, active=steps, repeat=1)
        with profile(activities=activities, schedule=sched, record_shapes=False) as prof:
            for i, idx in enumerate(batches[: warmup + steps]):
                if i == warmup:
                    _sync(dev)
                    t0 = datetime.datetime.now()
                with record_function("train_step"):
                    step(model, opt, augment(data.x_train[idx]), data.y_train[idx])
                prof.step()
            _sync(dev)
            seconds = (datetime.datetime.now() - t0).total_seconds()
    prof.export_chrome_trace(str(trace))
    rows = _top_ops(prof, dev, row_limit)
    table.write_text(_markdown(config, dev, steps, warmup, seconds, rows), encoding="utf-8")
    return ProfileResult(trace, table, steps, seconds,
                         tuple((r["name"], r["self_cpu_us"]) for r in rows))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _top_ops(prof: Any, dev: torch.device, row_limit: int) -> list[dict[str, Any]]:
    events = [e for e in prof.key_averages()
              if e.key != "train_step" and not e.key.startswith("ProfilerStep")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = []
    for e in events[:row_limit]:
        row = {"name": e.key, "calls": e.count, "self_cpu_us": float(e.self_cpu_time_total),
               "cpu_total_us": float(e.cpu_time_total),
               "self_cpu_pct": 100.0 * e.self_cpu_time_total / total}
        if dev.type == "cuda":
            row["self_device_us"] = float(getattr(e, "self_device_time_total", 0.0))
        rows.append(row)
    return rows


def _markdown(
    config: TrainConfig, dev: torch.device, steps: int, warmup: int, seconds: float, rows: list[dict]
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Training profile: {config.net}, batch {config.batch_size}, {config.optimizer}, "
        f"method {config.method}",
        "",
        f"{steps} steps after {warmup} warm-up steps, {seconds:.3f} s "
        f"({1000 * seconds / steps:.2f} ms/step) on {dev} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}), {now}.",
        "",
    ]
    cuda = dev.type == "cuda"
    head = "| operator | calls | self CPU ms | CPU total ms | self CPU % |"
    head += " self CUDA ms |" if cuda else ""
    lines += [head, "|---|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for r in rows:
        line = (f"| `{r['name']}` | {r['calls']} | {r['self_cpu_us'] / 1000:.3f} | "
                f"{r['cpu_total_us'] / 1000:.3f} | {r['self_cpu_pct']:.1f} |")
        if cuda:
            line += f" {r['self_device_us'] / 1000:.3f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"
