"""Sweeps on one machine: a grid of training runs queued in the store, taken by worker processes.

A sweep is a list of :class:`~sharpminima.config.TrainConfig` (usually a grid over seeds,
batch sizes, methods, learning rates). :func:`enqueue` records each as a ``pending`` run
(a run already ``done`` is left alone; a ``failed`` one is queued again). Workers, in
processes of this machine (or of machines that share the store's folder on a file system
with working POSIX locks; across machines prefer the Ray and SLURM backends of
:mod:`sharpminima.backends`, which need no shared store), then loop:
:meth:`Store.claim_next` atomically takes the oldest pending run, a heartbeat thread keeps it
claimed, :func:`sharpminima.train.train` trains it (checkpointing every epoch),
and the run ends ``done``, ``diverged`` or ``failed``. Nothing runs twice: a claim is one
SQLite transaction, and a run is taken from its worker only when that worker's heartbeat
is older than ``stale_after_s`` (it died); the new worker resumes from the last checkpoint.

A worker that finds its run taken over (it was paused longer than the stale timeout) stops
heartbeating; in a worker process started by :func:`start_workers` it exits at once
without touching the run, so two workers never both finish it.

Only runs of kind ``train`` are queued and claimed; every pending ``train`` run in the
store is part of the queue.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError, StoreError

log = logging.getLogger(__name__)

__all__ = [
    "SweepResult",
    "WorkerReport",
    "enqueue",
    "expand_grid",
    "parse_grid",
    "run_sweep",
    "run_worker",
    "start_workers",
    "statuses",
]

#: Exit code of a worker process that lost its run to another worker.
LOST_EXIT_CODE = 3


# ----------------------------------------------------------------------------- the grid
def _parse_value(name: str, text: str, default: Any) -> Any:
    """Parse one grid value as the type of the field's default."""
    text = text.strip()
    if text.lower() in ("none", "null") and default is None:
        return None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(default, int) or name in ("train_limit", "test_limit"):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default or 0).__name__
        raise ConfigError(f"grid value {text!r} for {name} is not a valid {kind}") from None
    if isinstance(default, str) or default is None:
        return text
    raise ConfigError(f"config field {name} cannot be swept from the command line; use the Python API")


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """Parse ``["batch_size=256,6000", "seed=0,1"]`` into ``{field: [values]}``.

    Dashes in names are read as underscores (``batch-size`` = ``batch_size``); values are
    parsed as the type of the field's default (``none`` for optional fields).

    Raises:
        ConfigError: For a spec without ``=`` or values, an unknown or repeated field, or
            a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ConfigError(f"grid spec {spec!r} must look like name=value1,value2")
        if name not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config field {name!r} in grid; valid fields: {valid}")
        if name in grid:
            raise ConfigError(f"config field {name} appears twice in the grid; give its values once")
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        items = values.split(",")
        if any(not item.strip() for item in items):
            raise ConfigError(
                f"grid spec {spec!r} has an empty value; write name=value1,value2 without empty items"
            )
        grid[name] = [_parse_value(name, item, default) for item in items]
    return grid


def expand_grid(base: TrainConfig, grid: dict[str, Sequence[Any]]) -> list[TrainConfig]:
    """Return one config per point of the grid (the product, first field slowest).

    Raises:
        ConfigError: If a point is not a valid config.
    """
    names = list(grid)
    points = itertools.product(*grid.values())
    return [base.replace(**dict(zip(names, point, strict=True))) for point in points]


def check_configs(configs: Sequence[TrainConfig], dataset: Any = None) -> None:
    """Try every config as ``train`` would before queueing any: options, network, loss.

    Each distinct dataset is loaded once; each config's components are built and its
    network tried on two samples (:func:`sharpminima.train.loop.probe`), so a grid with
    one bad point fails with one line and queues nothing.

    Args:
        configs: The sweep's configurations.
        dataset: The data of every config, if already loaded.

    Raises:
        ConfigError: For the first config that ``train`` would reject.
        DataError: For data that does not load.
    """
    import torch

    from sharpminima.data import load
    from sharpminima.train.loop import probe
    from sharpminima.train.setup import check_options, fresh_model

    loaded: dict[tuple[str, str | None], Any] = {}
    for config in configs:
        key = (config.dataset, config.data_source)
        if dataset is None and key not in loaded:
            loaded[key] = load(config.dataset, source=config.data_source)
        data = (dataset if dataset is not None else loaded[key]).subset(config.train_limit, config.test_limit)
        check_options(config, data)
        with torch.random.fork_rng(devices=[]):
            probe(fresh_model(config, data, None), data, config)


# ----------------------------------------------------------------------------- the queue
def enqueue(store: Any, configs: Sequence[TrainConfig]) -> list[str]:
    """Record each config as a ``pending`` run (failed runs are queued again).

    Returns:
        The run ids, in order, without repeats.
    """
    ids: list[str] = []
    for config in configs:
        record, _ = store.get_or_create_run(config.to_dict(), config.hash())
        if record.status in ("failed", "interrupted"):
            store.set_status(record.id, "pending")
        if record.id not in ids:
            ids.append(record.id)
    return ids


def statuses(store: Any, run_ids: Sequence[str]) -> dict[str, str]:
    """Return ``{run id: status}``."""
    return {run_id: store.get_run(run_id).status for run_id in run_ids}


@dataclass
class WorkerReport:
    """What one worker did.

    Attributes:
        worker: Its name (``host:pid``).
        trained: Runs it claimed and finished (done or diverged), in order.
        failed: Runs it claimed that raised (recorded ``failed`` in the store).
    """

    worker: str
    trained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class _Heartbeat(threading.Thread):
    """Beats every ``interval_s`` until stopped; sets ``lost`` if the run was taken over."""

    def __init__(self, store: Any, run_id: str, worker: str, interval_s: float, on_lost: Callable[[], None]):
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.store, self.run_id, self.worker = store, run_id, worker
        self.interval_s = interval_s
        self.on_lost = on_lost
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.store.heartbeat(self.run_id, self.worker)
            except StoreError as exc:
                if self.stopped.is_set() or self._finished_here():  # the run just finished
                    return
                log.warning("%s", exc)
                self.lost.set()
                self.on_lost()
                return


    def _finished_here(self) -> bool:
        """Whether this worker itself ended the run (a last beat raced the end of training)."""
        try:
            record = self.store.get_run(self.run_id)
            rows = self.store._query("SELECT worker FROM runs WHERE id = ?", (self.run_id,))
        except StoreError:
            return False
        return record.status in ("done", "diverged", "failed", "interrupted") and bool(rows) and (
            rows[0]["worker"] == self.worker
        )


def run_worker(
    store: Any,
    *,
    run_ids: Sequence[str] | None = None,
    worker: str | None = None,
    stale_after_s: float = 300.0,
    heartbeat_s: float | None = None,
    poll_s: float = 1.0,
    device: str | None = None,
    on_lost: Callable[[], None] | None = None,
) -> WorkerReport:
    """Claim and train queued runs until none is left.

    The worker stops when nothing can be claimed and, if ``run_ids`` is given, none of
    those runs is still ``running`` (held by another worker, whose run it takes over if
    that worker's heartbeat goes stale).

    Args:
        store: The shared run store.
        run_ids: The sweep's runs, to wait for (None: stop as soon as the queue is empty).
        worker: Its name (default ``host:pid``).
        stale_after_s: Heartbeat age after which another worker's run is taken over.
        heartbeat_s: Seconds between heartbeats (default ``stale_after_s / 5``).
        poll_s: Seconds between looks at the queue while waiting.
        device: Where to train (default: CUDA if available).
        on_lost: Called (from the heartbeat thread) when the run was taken over.

    Returns:
        What the worker did.

    Raises:
        ConfigError: For a non-positive ``stale_after_s``, ``heartbeat_s`` not below
            it, or a non-positive ``poll_s``.
    """
    from sharpminima.data import load
    from sharpminima.train import train

    beat = stale_after_s / 5 if heartbeat_s is None else heartbeat_s
    if not stale_after_s > 0 or not 0 < beat < stale_after_s or not poll_s > 0:
        raise ConfigError(
            f"need 0 < heartbeat ({beat:g} s) < stale timeout ({stale_after_s:g} s) and a "
            f"positive poll interval ({poll_s:g} s)"
        )
    name = worker or f"{platform.node()}:{os.getpid()}"
    report = WorkerReport(name)
    data_cache: dict[tuple[str, str | None], Any] = {}
    while True:
        record = store.claim_next(name, stale_after_s, kind="train")
        if record is None:
            if run_ids and any(s == "running" for s in statuses(store, run_ids).values()):
                time.sleep(poll_s)
                continue
            return report
        config = TrainConfig.from_dict(record.config)
        key = (config.dataset, config.data_source)
        if key not in data_cache:
            data_cache[key] = load(config.dataset, source=config.data_source)
        heart = _Heartbeat(store, record.id, name, beat, on_lost or (lambda: None))
        heart.start()
        try:
            train(config, dataset=data_cache[key], store=store, device=device)
        except KeyboardInterrupt:
            if store.get_run(record.id).status == "running":  # stopped before train() recorded it
                store.set_status(record.id, "interrupted", "interrupted; rerun the sweep to resume")
            raise
        except Exception as exc:  # go on with the queue
            message = f"{type(exc).__name__}: {exc}"
            log.warning("run %s failed: %s", record.id, message)
            if store.get_run(record.id).status == "running":  # raised before train() recorded it
                store.set_status(record.id, "failed", message)
            report.failed.append(record.id)
        else:
            report.trained.append(record.id)
        finally:
            heart.stopped.set()
            heart.join()


def _exit_lost() -> None:
    # A worker process whose run another worker took over leaves at once: a normal exit
    # would run the loop's failure handler and overwrite the new owner's record.
    os._exit(LOST_EXIT_CODE)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _worker_process(root: str, options: dict[str, Any], reports: Any) -> None:
    """Entry point of a worker process started by :func:`start_workers`."""
    import torch

    from sharpminima.store import Store

    threads = options.pop("threads", None)
    if threads:
        torch.set_num_threads(threads)  # training itself uses its config's num_threads
    # SIGTERM (the sweep stopping its workers) ends the run as ``interrupted``, like Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    report = run_worker(Store(root), on_lost=_exit_lost, **options)
    reports.put(dataclasses.asdict(report))


def start_workers(
    store_root: str | os.PathLike[str], count: int, reports: Any = None, **options: Any
) -> list[multiprocessing.process.BaseProcess]:
    """Start ``count`` worker processes (spawned, so each opens the store afresh).

    Args:
        store_root: The store's folder.
        count: Number of processes (>= 1).
        reports: A ``multiprocessing`` queue (spawn context) that receives each finished
            worker's :class:`WorkerReport` as a dict, or None.
        **options: :func:`run_worker` options (``run_ids``, ``stale_after_s``,
            ``heartbeat_s``, ``poll_s``, ``device``) and ``threads`` (torch threads per
            worker; default: the CPU count divided among the workers).

    Returns:
        The started processes.

    Raises:
        ConfigError: If ``count`` < 1.
    """
    if count < 1:
        raise ConfigError(f"--workers must be a positive integer, got {count}")
    ctx = multiprocessing.get_context("spawn")
    queue = reports if reports is not None else ctx.Queue()
    options.setdefault("threads", max(1, (os.cpu_count() or 1) // count))
    procs = []
    for _ in range(count):
        proc = ctx.Process(target=_worker_process, args=(str(store_root), dict(options), queue))
        proc.start()
        procs.append(proc)
    return procs


@dataclass
class SweepResult:
    """The end of a sweep.

    Attributes:
        run_ids: The sweep's runs.
        statuses: ``{run id: status}`` at the end.
        reports: Reports of the workers that exited normally (a killed one sends none).
        exit_codes: Exit code of every worker process.
    """

    run_ids: list[str]
    statuses: dict[str, str]
    reports: list[WorkerReport]
    exit_codes: list[int | None]

    @property
    def complete(self) -> bool:
        """Whether every run finished (done or diverged)."""
        return all(s in ("done", "diverged") for s in self.statuses.values())


def run_sweep(
    store: Any,
    configs: Sequence[TrainConfig],
    *,
    workers: int = 1,
    progress: Callable[[dict[str, str], list[Any]], None] | None = None,
    poll_s: float = 1.0,
    **options: Any,
) -> SweepResult:
    """Queue ``configs`` and train them with ``workers`` processes; wait for the end.

    Args:
        store: The run store (its folder is shared with the workers).
        configs: The sweep's configurations.
        workers: Number of worker processes on this machine.
        progress: Called every ``poll_s`` with ``{run id: status}`` and the processes.
        poll_s: Seconds between looks at the store.
        **options: :func:`start_workers` options.

    Returns:
        The final statuses and the workers' reports.

    Raises:
        ConfigError: If there is nothing to run, or for bad worker options.
    """
    if not configs:
        raise ConfigError("the sweep has no runs; give --grid values")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers}")  # before any row
    run_ids = enqueue(store, configs)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = start_workers(store.root, workers, queue, run_ids=run_ids, poll_s=poll_s, **options)
    reports: list[WorkerReport] = []

    def drain() -> None:
        while True:
            try:
                reports.append(WorkerReport(**queue.get(timeout=0.05)))
            except Exception:  # queue.Empty
                return

    try:
        while any(p.is_alive() for p in procs):
            if progress is not None:
                progress(statuses(store, run_ids), procs)
            drain()
            time.sleep(poll_s)
    except BaseException:
        for p in procs:  # their runs go stale and are taken over by the next sweep
            p.terminate()
        raise
    for p in procs:
        p.join()
    drain()
    final = statuses(store, run_ids)
    if progress is not None:
        progress(final, procs)
    return SweepResult(run_ids, final, reports, [p.exitcode for p in procs])

