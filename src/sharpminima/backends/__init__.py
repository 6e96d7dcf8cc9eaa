"""Where the runs of a sweep, a study or a reproduction train: here, on Ray, or on SLURM.

``local`` (the default) trains in this process (``sweep --workers N``: in N processes of
this machine, sharing the store's folder). ``ray`` runs each run as a Ray task on a Ray
cluster, and ``slurm`` as one job of a job array submitted through ``submitit``. On both,
the driver (the process that runs the command) is the only writer of the store: a worker
trains in a private temporary store and returns the finished run as a bundle of rows and
file bytes (:mod:`sharpminima.store.transfer`), which the driver imports in one
transaction. So no worker needs the store's folder; run identity is the local one (a
rerun of the same command skips finished runs, and a driver killed with ``kill -9``
resumes: finished runs are found, unfinished ones are submitted again); a worker killed
mid-run is retried by the engine and its run imported once; a run that raises is recorded
``failed`` with its error and the rest go on; Ctrl-C cancels the outstanding work and
marks its runs ``interrupted``.

What a worker does not do is resume a half-trained run: its checkpoints live in its
temporary store and die with it, so a retried or resubmitted run starts from its first
epoch (with the same seed, hence the same result).

Example:
    >>> from sharpminima.backends import get_backend
    >>> backend = get_backend("ray", address="auto", cpus_per_run=2)  # doctest: +SKIP
    >>> backend.train_many(store, configs)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from sharpminima.errors import ConfigError

__all__ = ["BACKENDS", "Backend", "get_backend", "prepare_runs"]

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray", "slurm")

#: ``progress(run_id, status)`` after each run the driver imported.
RunProgress = Callable[[str, str], None]


class Backend:
    """Trains a list of configs into a store; subclasses say where.

    Attributes:
        name: ``"local"``, ``"ray"`` or ``"slurm"``.
    """

    name = "local"

    def check(self) -> None:
        """Raise ConfigError now if the backend cannot run (not installed, unreachable...)."""

    def train_many(
        self, store: Any, configs: Sequence[Any], *, progress: RunProgress | None = None
    ) -> dict[str, str]:
        """Train every config (skipping finished runs) and return ``{run id: status}``."""
        from sharpminima.train import train

        ids = prepare_runs(store, configs)
        for config in configs:
            run = train(config, store=store)
            if progress is not None:
                progress(run.id, run.status)
        return {run_id: store.get_run(run_id).status for run_id in ids}

    def close(self) -> None:
        """Release what the backend holds (a Ray connection it opened)."""


def _check_positive(value: float, flag: str, *, integral: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{flag} must be a finite number >= 0, got {value!r}")
    if integral and value != int(value):
        raise ConfigError(f"{flag} must be a whole number, got {value!r}")
    return float(value)


def get_backend(
    name: str,
    *,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
    device: str | None = None,
    max_retries: int = 3,
    slurm_folder: str | None = None,
    partition: str | None = None,
    time_min: int = 60,
    slurm_cluster: str | None = None,
) -> Backend:
    """Return the backend ``name`` with its options checked (nothing is started yet).

    Args:
        name: One of :data:`BACKENDS`.
        address: Ray: ``"auto"`` (a running cluster on this machine), ``"ray://HOST:PORT"``
            or ``"HOST:PORT"``; None starts a private local cluster.
        cpus_per_run: CPUs each run reserves (Ray: fractional allowed; SLURM: whole).
            Default: the runs' torch threads (``TrainConfig.num_threads``), which a run
            uses whatever it reserves, so that its weights do not depend on where it ran.
        gpus_per_run: GPUs each run reserves (Ray: fractional allowed, e.g. 0.5).
        device: Where a run trains on its worker (default: CUDA when the run has a GPU).
        max_retries: How often a run whose worker died is retried.
        slurm_folder: SLURM: submitit's folder for job scripts, logs and results (on a
            file system the cluster's nodes share).
        partition: SLURM partition.
        time_min: SLURM time limit per run, minutes.
        slurm_cluster: submitit's cluster (None: SLURM when ``sbatch`` exists; ``"local"``
            runs the jobs as local processes, for tests and laptops).

    Returns:
        The backend.

    Raises:
        ConfigError: An unknown backend, options that do not apply to it, or bad values.
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"--max-retries must be an integer >= 0, got {max_retries!r}")
    cpus = None if cpus_per_run is None else _check_positive(cpus_per_run, "--cpus-per-run")
    gpus = _check_positive(0 if gpus_per_run is None else gpus_per_run, "--gpus-per-run")
    if name == "local":
        given = [flag for flag, value in (("--address", address), ("--cpus-per-run", cpus_per_run),
                                          ("--gpus-per-run", gpus_per_run), ("--partition", partition))
                 if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --backend ray or slurm")
        return Backend()
    if cpus is not None and cpus <= 0:
        raise ConfigError("--cpus-per-run must be > 0 on a cluster")
    if name == "ray":
        if partition is not None:
            raise ConfigError("--partition is a SLURM option; use it with --backend slurm")
        from sharpminima.backends.ray_backend import RayBackend

        return RayBackend(address=address, cpus_per_run=cpus, gpus_per_run=gpus, device=device,
                          max_retries=max_retries)
    if address is not None:
        raise ConfigError("--address is a Ray option; use it with --backend ray")
    if cpus is not None:
        _check_positive(cpus, "--cpus-per-run", integral=True)
    _check_positive(gpus, "--gpus-per-run", integral=True)
    if isinstance(time_min, bool) or not isinstance(time_min, int) or time_min < 1:
        raise ConfigError(f"--time must be a whole number of minutes >= 1, got {time_min!r}")
    from sharpminima.backends.slurm_backend import SlurmBackend

    return SlurmBackend(folder=slurm_folder, partition=partition, time_min=time_min,
                        cpus_per_run=None if cpus is None else int(cpus),
                        gpus_per_run=int(gpus), device=device, max_retries=max_retries, cluster=slurm_cluster)


def mark_interrupted(store: Any, run_ids: Sequence[str]) -> None:
    """After Ctrl-C or SIGTERM: the unfinished runs say so (a rerun submits them again)."""
    from sharpminima.store.records import STATUSES

    status = "interrupted" if "interrupted" in STATUSES else "pending"
    for run_id in run_ids:
        try:
            if store.get_run(run_id).status not in ("done", "diverged", "failed"):
                store.set_status(run_id, status, "interrupted; rerun the same command to resume")
        except Exception as exc:  # the store itself may be what failed; keep the first error
            log.warning("could not mark run %s interrupted: %s", run_id, exc)


def default_cpus(configs: Sequence[Any]) -> int:
    """CPUs a run reserves by default: the most torch threads any of ``configs`` trains with."""
    return max((int(getattr(c, "num_threads", 1) or 1) for c in configs), default=1)


def prepare_runs(store: Any, configs: Sequence[Any]) -> list[str]:
    """Create (``pending``) the run of every config; return the ids in order, no repeats.

    Failed and interrupted runs are set ``pending`` again; finished ones are left alone.
    """
    ids: list[str] = []
    for config in configs:
        record, _ = store.get_or_create_run(config.to_dict(), config.hash())
        if record.status not in ("pending", "done", "diverged"):
            store.set_status(record.id, "pending")
        if record.id not in ids:
            ids.append(record.id)
    return ids


def order_by_dependency(store: Any, configs: Sequence[Any]) -> list[list[Any]]:
    """Split configs into waves: a config that warm-starts from another's run comes after it.

    Raises:
        ConfigError: A config warm-starts from a run that is neither in the store nor
            in this list.
    """
    from sharpminima.backends.task import init_run_id

    by_id = {c.hash()[:12]: c for c in configs}
    waves: list[list[Any]] = []
    placed: set[str] = set()
    left = list(dict.fromkeys(configs))
    while left:
        wave = []
        for config in left:
            parent = init_run_id(config.init_from)
            if parent is None or parent in placed or parent not in by_id:
                if parent is not None and parent not in by_id and not store._query(
                    "SELECT id FROM runs WHERE id = ?", (parent,)
                ):
                    raise ConfigError(
                        f"init_from={config.init_from!r}: no run {parent} in the store or in this "
                        "sweep; train it first"
                    )
                wave.append(config)
        if not wave:
            raise ConfigError("the configs' init_from runs form a cycle; they cannot be trained")
        placed.update(c.hash()[:12] for c in wave)
        left = [c for c in left if c not in wave]
        waves.append(wave)
    return waves
