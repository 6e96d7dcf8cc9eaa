"""The ``--backend`` options shared by ``sweep``, ``study correlation`` and ``reproduce``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

BackendOpt = Annotated[
    str, typer.Option("--backend", help="Where runs train: local (this machine), ray or slurm.")
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a new "
                 "local cluster)."),
]
CpusOpt = Annotated[
    float | None,
    typer.Option("--cpus-per-run", help="CPUs per run on ray/slurm (default 1; also its torch threads)."),
]
GpusOpt = Annotated[
    float | None,
    typer.Option("--gpus-per-run", help="GPUs per run on ray/slurm (fractions share a GPU on ray)."),
]
RetriesOpt = Annotated[
    int, typer.Option("--max-retries", help="Retries of a run whose worker died (ray/slurm).")
]
PartitionOpt = Annotated[str | None, typer.Option("--partition", help="SLURM partition.")]
TimeOpt = Annotated[int, typer.Option("--time", help="SLURM time limit per run, minutes.")]
SlurmFolderOpt = Annotated[
    Path | None,
    typer.Option("--slurm-folder", help="submitit's folder for jobs and logs, shared by the nodes "
                 "(default: STORE/slurm)."),
]
SlurmClusterOpt = Annotated[
    str | None,
    typer.Option("--slurm-cluster", help="submitit cluster: slurm (default) or local (the same jobs as "
                 "local processes, to try a SLURM sweep without SLURM)."),
]


def make_backend(
    backend: str,
    *,
    address: str | None,
    cpus_per_run: float | None,
    gpus_per_run: float | None,
    max_retries: int,
    partition: str | None,
    time_min: int,
    slurm_folder: Path | None,
    slurm_cluster: str | None,
    device: str | None,
) -> Any:
    """Check the options and return the backend (not yet connected); ConfigError if bad."""
    from sharpminima.backends import get_backend
    from sharpminima.errors import ConfigError

    if slurm_cluster not in (None, "slurm", "local"):
        raise ConfigError(f"--slurm-cluster must be slurm or local, got {slurm_cluster!r}")
    if backend != "slurm" and (slurm_folder is not None or slurm_cluster is not None):
        raise ConfigError("--slurm-folder and --slurm-cluster need --backend slurm")
    return get_backend(
        backend.strip().lower(), address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
        device=None if device in (None, "auto") else device, max_retries=max_retries, partition=partition,
        time_min=time_min, slurm_folder=str(slurm_folder) if slurm_folder else None,
        slurm_cluster=slurm_cluster,
    )
