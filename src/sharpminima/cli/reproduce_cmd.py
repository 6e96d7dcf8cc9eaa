"""``sharpminima reproduce`` and ``sharpminima report``."""

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
from sharpminima.cli.common import WorkProgress, echo, echo_json, is_root_process, open_store
from sharpminima.errors import ConfigError

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for results.json and the report.")]
FigureFormatOpt = Annotated[
    str,
    typer.Option(
        "--figure-format",
        help="Files written per figure, comma-separated: png (220 dpi; the HTML embeds it in any "
        "case), pdf and svg (vector, for papers).",
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``reproduce`` and ``report`` to ``app``."""
    app.command("reproduce")(reproduce)
    app.command("report")(report)


def reproduce(
    experiments: Annotated[
        list[str] | None,
        typer.Argument(
            help="Experiments to run (default: all of the preset): table2, table3, table4, "
            "sharpness, fig2, fig3, fig7, fig4, fig5, fig6, distance, hessian, stopping, bn_test, "
            "remedies, conservative_sweep, init_study, dynamics."
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="quick (minutes on a CPU), paper (faithful) or remedies (F1 + every method).")
    ] = "quick",
    nets: Annotated[str | None, typer.Option(help="Comma-separated networks, e.g. f1,c1.")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials per regime.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the first trial (trial k uses seed + k; default 0).")
    ] = None,
    sb_epochs: Annotated[int | None, typer.Option(help="Override the SB epochs (cap).")] = None,
    lb_epochs: Annotated[int | None, typer.Option(help="Override the LB epochs (cap).")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Use the first N training samples.")] = None,
    sharpness_samples: Annotated[
        int | None, typer.Option(help="Training samples the sharpness loss averages over.")
    ] = None,
    cifar10: Annotated[str | None, typer.Option(help="Path of cifar-10-python.tar.gz.")] = None,
    cifar100: Annotated[str | None, typer.Option(help="Path of cifar-100-python.tar.gz.")] = None,
    timit: Annotated[str | None, typer.Option(help="Path of TIMIT features .npz.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: auto).")] = None,
    vectorize: Annotated[
        bool | None,
        typer.Option(
            "--vectorize/--no-vectorize",
            help="Train each regime's trials as one batched computation (default: on CUDA only).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override any preset field, NAME=VALUE (repeatable; tuples comma-separated), "
            "e.g. --set batch_sizes=256,1000,6000 --set sweep_epochs=20.",
        ),
    ] = None,
    out: OutOpt = Path("reports/latest"),
    store: StoreOpt = None,
    figure_format: FigureFormatOpt = "png,pdf,svg",
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
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
    """Run the paper's experiments through the run store, then write the report."""
    from sharpminima.figstyle import parse_figure_formats
    from sharpminima.report import write_report

    figure_formats = parse_figure_formats(figure_format)  # before any work
    from sharpminima.reproduce import get_preset
    from sharpminima.reproduce import reproduce as run_reproduction

    if nets is not None and any(not n.strip() for n in nets.split(",")):
        raise ConfigError(f"--nets {nets!r} has an empty item; write e.g. --nets f1,c1")
    overrides: dict[str, Any] = {
        "nets": tuple(n.strip().lower() for n in nets.split(",")) if nets else None,
        "trials": trials,
        "seed": seed,
        "sb_epochs": sb_epochs,
        "lb_epochs": lb_epochs,
        "train_limit": train_limit,
        "sharpness_samples": sharpness_samples,
    }
    from sharpminima.cli.common import check_named, parse_options
    from sharpminima.reproduce.presets import coerce_overrides

    overrides.update(coerce_overrides(check_named("--set", dict(parse_options("--set", set_)))))
    p = get_preset(preset, **overrides)
    sources = {k: v for k, v in (("cifar10", cifar10), ("cifar100", cifar100), ("timit", timit)) if v}
    bars: list[WorkProgress] = []

    def factory(total: float) -> Any:
        bars.append(WorkProgress(f"reproduce {p.name}", total))
        return bars[-1]

    cluster = make_backend(backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                           max_retries=max_retries, partition=partition, time_min=time_limit,
                           slurm_folder=slurm_folder, slurm_cluster=slurm_cluster, device=device)
    from sharpminima.train.parallel import follower_store

    if cluster.name != "local" and not is_root_process():
        raise ConfigError("--backend ray/slurm and torchrun do not mix: start reproduce once, "
                          "without torchrun")
    cluster.check()  # reach the cluster before anything is trained or written
    run_store = follower_store(open_store(store))  # under torchrun only rank 0 writes the store
    if not is_root_process():  # ...and the report; the other ranks write theirs aside
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="sharpminima-rank-"))
    try:
        results = run_reproduction(
            p,
            store=run_store,
            out=out,
            experiments=experiments,
            device=device,
            sources=sources,
            progress_factory=factory,
            vectorize=vectorize,
            backend=cluster,
        )
    finally:
        for bar in bars:
            bar.close()
        cluster.close()
    md, page = write_report(out, results, figure_formats)
    if not is_root_process():  # a rank > 0's copy of the report
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    if json_output:
        echo_json(results)
    else:
        echo(f"report: {page} (and {md})")


def report(
    out: OutOpt = Path("reports/latest"),
    figure_format: FigureFormatOpt = "png,pdf,svg",
    json_output: Annotated[bool, typer.Option("--json", help="Print the files written as JSON.")] = False,
) -> None:
    """Write report.md, report.html and the figures from a reproduction's results.json."""
    from sharpminima.figstyle import parse_figure_formats
    from sharpminima.report import write_report

    md, page = write_report(out, figure_formats=parse_figure_formats(figure_format))
    if json_output:
        echo_json({"report": str(page), "markdown": str(md)})
    else:
        echo(f"report: {page} (and {md})")
