"""Runs as SLURM jobs through ``submitit``: one job array per wave of runs.

Each run is one task of a job array (``sbatch --array``), with the partition, time limit,
CPUs and GPUs given on the command line; submitit pickles the task and its result into
``--slurm-folder`` (which the cluster's nodes must share, unlike the store). The driver
waits for the jobs, imports each run as it finishes and resubmits a job whose node died
or that was preempted (up to ``max_retries`` times). Workers load the data themselves
(from the dataset cache or ``--from``), so those files must be readable on the nodes.

``cluster="local"`` runs the same jobs as local processes with submitit's own local
executor: how the tests exercise this backend, and a way to try a SLURM sweep on a laptop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharpminima.backends import (
    Backend,
    RunProgress,
    default_cpus,
    mark_interrupted,
    order_by_dependency,
    prepare_runs,
)
from sharpminima.errors import ConfigError

__all__ = ["SlurmBackend"]

log = logging.getLogger(__name__)


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--backend slurm needs submitit; install it with: pip install 'sharpminima[slurm]'"
        ) from None
    return submitit


class SlurmBackend(Backend):
    """Train runs as SLURM array jobs (or local processes with ``cluster="local"``).

    Args:
        folder: submitit's folder (default ``<store>/slurm``).
        partition: SLURM partition (None: the cluster's default).
        time_min: Time limit per run, minutes.
        cpus_per_run: CPUs per task (None: the runs' ``num_threads``).
        gpus_per_run: GPUs per task.
        device: Where a run trains (default: ``cuda`` with GPUs, else ``cpu``).
        max_retries: Resubmissions of a run whose job died without a result.
        cluster: submitit's cluster name (None: ``slurm`` if ``sbatch`` is found).
        poll_s: Seconds between looks at the jobs.
    """

    name = "slurm"

    def __init__(self, *, folder: str | None = None, partition: str | None = None, time_min: int = 60,
                 cpus_per_run: int | None = None, gpus_per_run: int = 0, device: str | None = None,
                 max_retries: int = 3, cluster: str | None = None, poll_s: float = 1.0) -> None:
        self.folder = folder
        self.partition = partition
        self.time_min = time_min
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.device = device or ("cuda" if gpus_per_run > 0 else "cpu")
        self.max_retries = max_retries
        self.cluster = cluster
        self.poll_s = poll_s

    def check(self) -> None:
        """Raise ConfigError if submitit is missing or no SLURM (``sbatch``) is found."""
        import shutil

        _import_submitit()
        if self.cluster in (None, "slurm") and shutil.which("sbatch") is None:
            raise ConfigError("--backend slurm: no `sbatch` on this machine; run from a SLURM login node")

    def _executor(self, store: Any, cpus: int) -> Any:
        submitit = _import_submitit()
        folder = Path(self.folder) if self.folder else Path(store.root) / "slurm"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster or "slurm")
        params: dict[str, Any] = {"timeout_min": self.time_min, "cpus_per_task": cpus,
                                  "name": "sharpminima-run", "tasks_per_node": 1, "nodes": 1}
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        if self.partition:
            params["slurm_partition"] = self.partition
        executor.update_parameters(**params)
        return executor

    def train_many(
        self, store: Any, configs: Sequence[Any], *, progress: RunProgress | None = None
    ) -> dict[str, str]:
        """Submit every unfinished config as a job-array task; import each run as it ends.

        Raises:
            ConfigError: See :meth:`check`, and an ``init_from`` that names no run.
            KeyboardInterrupt: Outstanding jobs are cancelled first and their runs marked
                ``interrupted``; the next run of the command submits them again.
        """
        from sharpminima.backends.task import init_run_id, train_task
        from sharpminima.store.transfer import export_run, import_run

        waves = order_by_dependency(store, configs)
        self.check()
        ids = prepare_runs(store, configs)
        executor = self._executor(store, self.cpus_per_run or default_cpus(configs))
        jobs: dict[Any, tuple[str, dict[str, Any], int]] = {}

        def submit(items: list[tuple[str, dict[str, Any], int]]) -> None:
            with executor.batch():  # one job array
                pending = [(executor.submit(train_task, payload), run_id, payload, tries)
                           for run_id, payload, tries in items]
            for job, run_id, payload, tries in pending:
                jobs[job] = (run_id, payload, tries)
                log.info("run %s submitted as job %s", run_id, job.job_id)

        try:
            for wave in waves:
                items = []
                for config in wave:
                    run_id = config.hash()[:12]
                    if store.get_run(run_id).status in ("done", "diverged"):
                        continue
                    parent = init_run_id(config.init_from)
                    payload = {"config": config.to_dict(), "device": self.device,
                               "inits": [export_run(store, parent)] if parent else []}
                    items.append((run_id, payload, 0))
                if items:
                    submit(items)
                while jobs:
                    done = [job for job in jobs if job.done()]
                    if not done:
                        time.sleep(self.poll_s)
                        continue
                    retry = []
                    for job in done:
                        run_id, payload, tries = jobs.pop(job)
                        try:
                            bundle = job.result()
                        except Exception as exc:
                            lines = str(exc).strip().splitlines() or [""]
                            message = f"{type(exc).__name__}: {lines[-1]}"
                            if tries < self.max_retries and _died(exc):
                                log.warning("job of run %s died (%s); resubmitting", run_id, message)
                                retry.append((run_id, payload, tries + 1))
                                continue
                            store.set_status(run_id, "failed", message[:500])
                        else:
                            import_run(store, bundle)
                        if progress is not None:
                            progress(run_id, store.get_run(run_id).status)
                    if retry:
                        submit(retry)
        except BaseException as exc:
            for job in jobs:
                try:
                    job.cancel(check=False)
                except Exception as err:  # already finished
                    log.debug("cancel %s: %s", job.job_id, err)
            if isinstance(exc, KeyboardInterrupt):
                mark_interrupted(store, ids)
            raise
        return {run_id: store.get_run(run_id).status for run_id in ids}


def _died(exc: BaseException) -> bool:
    """Whether a job ended without a result (node died, preempted, killed), not by raising."""
    submitit = _import_submitit()
    return isinstance(exc, submitit.core.utils.UncompletedJobError)
