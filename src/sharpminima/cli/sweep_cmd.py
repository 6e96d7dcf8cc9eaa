"""``sharpminima sweep``: a grid of runs as a queue in the store, trained by worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sharpminima.cli.backend_opts import (
    AddressOpt,
    BackendOpt,
    CpusOpt,
    GpusOpt,
    PartitionOpt,
    RetriesOpt,
    SlurmClusterOpt,
    SlurmFolderOpt,
    TimeOpt,
    make_backend,
)
from sharpminima.cli.common import echo, echo_json, open_store, table
from sharpminima.errors import ConfigError, SharpMinimaError

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
]


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` command to ``app``."""
    app.command("sweep")(sweep)


def sweep(
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="FIELD=V1,V2,... over any TrainConfig field (repeat; the product is swept), "
            "e.g. --grid batch_size=256,6000 --grid seed=0,1. One value fixes a field.",
        ),
    ] = None,
    net: Annotated[str, typer.Option(help="f1, f2, c1, c2, c3, c4 or module:function.")] = "f1",
    dataset: Annotated[str, typer.Option(help="mnist, cifar10, cifar100, timit, synthetic.")] = "mnist",
    batch_size: Annotated[int, typer.Option(help="Samples per step (unless swept).")] = 256,
    epochs: Annotated[int, typer.Option(help="Epochs, or the cap with --stop plateau.")] = 20,
    stop: Annotated[str, typer.Option(help="epochs or plateau.")] = "epochs",
    seed: Annotated[int, typer.Option(help="Seed (unless swept).")] = 0,
    train_limit: Annotated[int | None, typer.Option(help="Use the first N training samples.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Use the first N test samples.")] = None,
    source: Annotated[str | None, typer.Option("--from", help="User data file or folder.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this machine.")] = 1,
    worker_only: Annotated[
        bool,
        typer.Option(
            "--worker-only",
            help="Train queued runs in this process (join a queue from another machine); "
            "with --grid, also queue the grid and stay until its runs are finished.",
        ),
    ] = False,
    stale_after: Annotated[
        float, typer.Option(help="Seconds without heartbeat after which a dead worker's run is taken over.")
    ] = 300.0,
    heartbeat: Annotated[
        float | None, typer.Option(help="Seconds between heartbeats (default stale/5).")
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue.")] = 1.0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: auto).")] = None,
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    backend: BackendOpt = "local",
    address: AddressOpt = None,
    cpus_per_run: CpusOpt = None,
    gpus_per_run: GpusOpt = None,
    max_retries: RetriesOpt = 3,
    partition: PartitionOpt = None,
    time_limit: TimeOpt = 60,
    slurm_folder: SlurmFolderOpt = None,
    slurm_cluster: SlurmClusterOpt = None,
) -> None:
    """Train a grid of runs: here with --workers N processes, or on Ray or SLURM (resumable)."""
    from sharpminima import distributed
    from sharpminima.config import TrainConfig
    from sharpminima.sweep import (
        check_configs,
        enqueue,
        expand_grid,
        parse_grid,
        run_sweep,
        run_worker,
        statuses,
    )

    if distributed.launched():
        raise ConfigError("start sweep workers without torchrun: each worker is one process (--workers N)")
    cluster = make_backend(backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                           max_retries=max_retries, partition=partition, time_min=time_limit,
                           slurm_folder=slurm_folder, slurm_cluster=slurm_cluster, device=device)
    if cluster.name != "local" and (worker_only or workers != 1):
        raise ConfigError(f"--worker-only and --workers are for the local backend; --backend {cluster.name} "
                          "runs as many runs at once as the cluster has room for")
    configs: list[TrainConfig] = []
    if grid:
        base = TrainConfig(
            net=net,
            dataset=dataset,
            batch_size=batch_size,
            epochs=epochs,
            stop=stop,  # type: ignore[arg-type]
            seed=seed,
            train_limit=train_limit,
            test_limit=test_limit,
            data_source=source,
        )
        configs = expand_grid(base, parse_grid(grid))
        check_configs(configs)  # as train would, before a row is queued
    elif not worker_only:
        raise ConfigError("give the sweep with --grid FIELD=V1,V2 (or join a queue with --worker-only)")
    if heartbeat is not None and heartbeat >= stale_after:
        raise ConfigError(f"--heartbeat ({heartbeat:g} s) must be below --stale-after ({stale_after:g} s)")
    cluster.check()  # reach the cluster before anything is written
    run_store = open_store(store)
    if cluster.name != "local":
        _cluster_sweep(run_store, cluster, configs, json_output)
        return
    options = {"stale_after_s": stale_after, "heartbeat_s": heartbeat, "poll_s": poll, "device": device}
    if worker_only:
        run_ids = enqueue(run_store, configs) if configs else None
        report = run_worker(run_store, run_ids=run_ids, **options)
        final = statuses(run_store, run_ids or report.trained + report.failed)
        _finish(run_store, final, json_output, {"worker": report.worker})
        return
    last: list[str] = []

    def progress(status: dict[str, str], procs: list[Any]) -> None:
        states = list(status.values())
        counts = {k: states.count(k) for k in ("done", "running", "pending", "failed")}
        alive = sum(1 for p in procs if p.is_alive())
        line = (
            f"sweep: {counts['done']}/{len(status)} done, {counts['running']} running, "
            f"{counts['pending']} pending, {counts['failed']} failed; {alive} workers"
        )
        if not json_output and line != (last[-1] if last else None):
            echo(line)
            last.append(line)

    result = run_sweep(
        run_store,
        configs,
        workers=workers,
        progress=progress,
        stale_after_s=stale_after,
        heartbeat_s=heartbeat,
        device=device,
        poll_s=poll,
    )
    _finish(run_store, result.statuses, json_output, {"exit_codes": result.exit_codes})


def _cluster_sweep(store: Any, cluster: Any, configs: list[Any], json_output: bool) -> None:
    """Train the grid on Ray or SLURM; the driver imports each run and prints a line."""
    finished = [0]

    def progress(run_id: str, status: str) -> None:
        finished[0] += 1
        if not json_output:
            echo(f"sweep: run {run_id} {status} on {cluster.name} ({finished[0]} trained so far)")

    try:
        final = cluster.train_many(store, configs, progress=progress)
    finally:
        cluster.close()
    _finish(store, final, json_output, {"backend": cluster.name})


def _finish(store: Any, final: dict[str, str], json_output: bool, extra: dict[str, Any]) -> None:
    rows = []
    for run_id, status in final.items():
        record = store.get_run(run_id)
        cfg, summary = record.config, record.summary
        rows.append(
            {
                "run_id": run_id,
                "status": status,
                "batch_size": cfg.get("batch_size"),
                "seed": cfg.get("seed"),
                "lr": cfg.get("lr"),
                "method": cfg.get("method"),
                "epochs": summary.get("epochs"),
                "train_acc": summary.get("train_acc"),
                "test_acc": summary.get("test_acc"),
                "message": record.message,
            }
        )
    if json_output:
        echo_json({"runs": rows, **extra})
    else:
        echo(table(rows, ["run_id", "status", "batch_size", "seed", "lr", "method", "epochs", "test_acc"]))
    unfinished = [r for r in rows if r["status"] not in ("done", "diverged")]
    if unfinished:
        first = unfinished[0]
        raise SharpMinimaError(
            f"{len(unfinished)} of {len(rows)} sweep runs did not finish (run {first['run_id']} is "
            f"{first['status']}: {first['message'] or 'no message'}); rerun the same sweep to retry them"
        )
