"""Runs as Ray tasks: one task per run, the driver the only writer of the store.

Each run is a task with ``num_cpus=--cpus-per-run`` and ``num_gpus=--gpus-per-run``
(fractional GPUs allowed), retried ``max_retries`` times when its worker dies. Datasets
are put in Ray's object store once per sweep and shared by the tasks, so workers need
neither the store's folder nor the data files; a warm-start run's bundle travels with
the task that needs it. See :mod:`sharpminima.backends` for the guarantees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
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

__all__ = ["RayBackend"]

log = logging.getLogger(__name__)

#: How long ``ray.init`` may try to reach a cluster before we give up.
CONNECT_TIMEOUT_S = 30.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend ray needs Ray; install it with: pip install 'sharpminima[ray]'"
        ) from None
    return ray


class RayBackend(Backend):
    """Train runs as Ray tasks.

    Args:
        address: Cluster address (``"auto"``, ``"ray://HOST:PORT"``, ``"HOST:PORT"``);
            None starts a private cluster on this machine (or joins the one already
            initialised in this process).
        cpus_per_run: CPUs per task (None: the runs' ``num_threads``, the torch threads
            a run trains with wherever it runs).
        gpus_per_run: GPUs per task (fractions share a GPU).
        device: Where a task trains (default: ``cuda`` when it has GPUs, else ``cpu``).
        max_retries: Retries of a task whose worker died.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, cpus_per_run: float | None = None,
                 gpus_per_run: float = 0.0, device: str | None = None, max_retries: int = 3) -> None:
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.device = device or ("cuda" if gpus_per_run > 0 else "cpu")
        self.max_retries = max_retries
        self._started = False

    # -- connection ---------------------------------------------------------------------
    def check(self, cpus: float | None = None) -> None:
        """Connect (or start a local cluster) and check one run's resources fit a node.

        Args:
            cpus: CPUs one run asks for (default ``cpus_per_run``, else 1).

        Raises:
            ConfigError: Ray is not installed, the address cannot be reached, or no node
                has the CPUs or GPUs one run asks for.
        """
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            try:
                if self.address is None:
                    ray.init(**kwargs)
                else:
                    _check_reachable(self.address)
                    ray.init(address=self.address, **kwargs)
            except ConfigError:
                raise
            except Exception as exc:  # ConnectionError, RuntimeError, ValueError by version
                raise ConfigError(
                    f"cannot reach the Ray cluster at {self.address or 'a new local cluster'} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); start one with "
                    "`ray start --head` or check --address (a cluster with token authentication needs "
                    "RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                ) from None
            self._started = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        most_cpus = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
        most_gpus = max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0)
        cpus = cpus or self.cpus_per_run or 1.0
        if cpus > most_cpus or self.gpus_per_run > most_gpus:
            raise ConfigError(
                f"one run asks for {cpus:g} CPUs and {self.gpus_per_run:g} GPUs, but the "
                f"largest node of the Ray cluster has {most_cpus:g} CPUs and {most_gpus:g} GPUs; "
                "lower --cpus-per-run/--gpus-per-run or add nodes"
            )

    def close(self) -> None:
        """Disconnect from (and stop) the cluster this backend started."""
        if self._started:
            ray = _import_ray()
            ray.shutdown()
            self._started = False

    # -- work -----------------------------------------------------------------------------
    def train_many(
        self, store: Any, configs: Sequence[Any], *, progress: RunProgress | None = None
    ) -> dict[str, str]:
        """Train every unfinished config as a Ray task; import each run as it returns.

        Returns:
            ``{run id: status}`` of every config, in order.

        Raises:
            ConfigError: See :meth:`check`, and an ``init_from`` that names no run.
            KeyboardInterrupt: Outstanding tasks are cancelled first and their runs marked
                ``interrupted`` (nothing half-written); the next run of the command
                submits them again.
        """
        from sharpminima.backends.task import init_run_id, train_task
        from sharpminima.store.transfer import export_run, import_run

        waves = order_by_dependency(store, configs)
        cpus = self.cpus_per_run or default_cpus(configs)
        self.check(cpus)
        ray = _import_ray()
        ids = prepare_runs(store, configs)
        remote = ray.remote(train_task).options(
            num_cpus=cpus, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
            retry_exceptions=False, name="sharpminima-run",
        )
        datasets: dict[tuple[str, str | None, int | None, int | None], Any] = {}
        outstanding: dict[Any, str] = {}
        try:
            for wave in waves:
                for config in wave:
                    run_id = config.hash()[:12]
                    if store.get_run(run_id).status in ("done", "diverged"):
                        log.info("run %s is finished in the store; not submitted", run_id)
                        continue
                    parent = init_run_id(config.init_from)
                    inits = [export_run(store, parent)] if parent else []
                    payload = {"config": config.to_dict(), "inits": inits, "device": self.device}
                    outstanding[remote.remote(payload, self._dataset_ref(ray, datasets, config))] = run_id
                self._collect(ray, store, outstanding, import_run, progress)
        except BaseException as exc:
            if outstanding:
                log.warning("cancelling %d outstanding Ray task(s)", len(outstanding))
                for ref in outstanding:
                    try:
                        ray.cancel(ref, force=True)
                    except Exception as err:  # already finished or gone
                        log.debug("cancel %s: %s", outstanding[ref], err)
            if isinstance(exc, KeyboardInterrupt):
                mark_interrupted(store, ids)
            raise
        return {run_id: store.get_run(run_id).status for run_id in ids}

    @staticmethod
    def _dataset_ref(ray: Any, cache: dict, config: Any) -> Any:
        """The config's data subset in Ray's object store, put once per dataset and limits."""
        from sharpminima.data import load

        key = (config.dataset, config.data_source, config.train_limit, config.test_limit)
        if key not in cache:
            data = load(config.dataset, source=config.data_source)
            cache[key] = ray.put(data.subset(config.train_limit, config.test_limit))
        return cache[key]

    @staticmethod
    def _collect(ray: Any, store: Any, outstanding: dict[Any, str], import_run: Any,
                 progress: RunProgress | None) -> None:
        """Import each finished task's run as it arrives, until none is outstanding."""
        while outstanding:
            ready, _ = ray.wait(list(outstanding), num_returns=1, timeout=1.0)
            for ref in ready:
                run_id = outstanding.pop(ref)
                started = time.perf_counter()
                try:
                    bundle = ray.get(ref)
                except Exception as exc:  # the task raised outside training, or its retries ran out
                    message = _task_error(exc)
                    log.warning("run %s failed on Ray: %s", run_id, message)
                    store.set_status(run_id, "failed", message)
                else:
                    import_run(store, bundle)
                    log.info("run %s imported in %.3f s", run_id, time.perf_counter() - started)
                status = store.get_run(run_id).status
                if progress is not None:
                    progress(run_id, status)


def _task_error(exc: BaseException) -> str:
    """One line for a task's failure (Ray wraps errors with the remote traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _check_reachable(address: str) -> None:
    """Fail fast (one line) when ``HOST:PORT`` of a ``ray://`` or GCS address does not answer."""
    import socket

    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--address {address!r} must be auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=5.0):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
            "`ray start --head` or check --address"
        ) from None
