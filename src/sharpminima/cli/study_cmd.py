"""``sharpminima study correlation`` (and ``study report``): which measure predicts the gap?"""

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
from sharpminima.cli.common import WorkProgress, echo, echo_json, open_store, table
from sharpminima.cli.reproduce_cmd import FigureFormatOpt

app = typer.Typer(help="Studies over many runs: which landscape measure predicts the generalization gap.",
                  no_args_is_help=True)

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for study.json, study.md and study.html.")]


def register(root: typer.Typer) -> None:
    """Add the ``study`` command group to ``root``."""
    from sharpminima.cli import noise_cmd

    noise_cmd.register(app)
    root.add_typer(app, name="study")


@app.command("correlation")
def correlation(
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="Axis of the grid, repeatable: name=v1,v2 (batch_size, lr, optimizer, "
                     "seed, epochs, weight_decay, momentum, adam_eps). Replaces the preset's grid."),
    ] = None,
    preset: Annotated[str, typer.Option(help="quick (2-core CPU, < 30 min) or full (GPU).")] = "quick",
    net: Annotated[str | None, typer.Option(help="Network (default: the preset's, f1).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: mnist).")] = None,
    measures: Annotated[
        str | None, typer.Option(help="Comma-separated measure families (default: the preset's, all).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of every run.")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Train on the first N training samples.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Test on the first N test samples.")] = None,
    measure_samples: Annotated[
        int | None, typer.Option(help="Training samples every landscape measure averages over.")
    ] = None,
    loss_threshold: Annotated[
        float | None, typer.Option(help="Include a run only if its final train cross-entropy is <= this.")
    ] = None,
    max_iters: Annotated[
        int | None, typer.Option(help="L-BFGS-B iterations of the sharpness measures.")
    ] = None,
    bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples of the intervals.")] = None,
    bootstrap_seed: Annotated[int | None, typer.Option(help="Seed of the bootstrap.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: auto).")] = None,
    plan_only: Annotated[
        bool, typer.Option("--plan", help="Print the runs and measures; train nothing.")
    ] = False,
    out: OutOpt = Path("reports/study"),
    store: StoreOpt = None,
    figure_format: FigureFormatOpt = "png,pdf,svg",
    json_output: Annotated[bool, typer.Option("--json", help="Print the correlations as JSON.")] = False,
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
    """Train (or reuse) every run of a grid, measure each, rank measures by the generalization gap."""
    from sharpminima.data import load
    from sharpminima.figstyle import parse_figure_formats
    from sharpminima.study.grid import get_preset, parse_grid
    from sharpminima.study.measures import FAMILIES
    from sharpminima.study.report import save_study, write_study_report
    from sharpminima.study.runner import plan, run_study

    figure_formats = parse_figure_formats(figure_format)  # before any work

    changes: dict[str, Any] = {
        "net": net.lower() if net and ":" not in net else net,
        "dataset": dataset,
        "epochs": epochs,
        "train_limit": train_limit,
        "test_limit": test_limit,
        "measure_samples": measure_samples,
        "loss_threshold": loss_threshold,
        "max_iters": max_iters,
        "num_bootstrap": bootstrap,
        "bootstrap_seed": bootstrap_seed,
    }
    if grid:
        changes["grid"] = tuple(parse_grid(grid).items())
    if measures:
        changes["measures"] = tuple(m.strip() for m in measures.split(",") if m.strip())
    p = get_preset(preset, **changes)
    if p.name != "custom" and (grid or any(v is not None for v in changes.values())):
        p = p.replace(name=f"{p.name} (modified)")
    cluster = make_backend(backend, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                           max_retries=max_retries, partition=partition, time_min=time_limit,
                           slurm_folder=slurm_folder, slurm_cluster=slurm_cluster, device=device)
    data = load(p.dataset)
    points, specs, total = plan(p, data.num_train)
    if plan_only and json_output:
        echo_json({"runs": [pt.hparams | {"epochs": pt.config.epochs} for pt in points],
                   "measures": [s.name for s in specs], "families": list(p.measures),
                   "families_available": list(FAMILIES), "work": total})
        return
    if plan_only:
        echo(f"{len(points)} runs x {len(specs)} measures; measure families: {', '.join(p.measures)}")
        echo(table([pt.hparams | {"epochs": pt.config.epochs} for pt in points],
                   [*points[0].hparams, "epochs"]))
        echo("measures: " + "; ".join(s.name for s in specs))
        echo(f"families available: {', '.join(FAMILIES)}")
        return
    cluster.check()  # reach the cluster before anything is trained or written
    bar = WorkProgress(f"study {p.name}", total)

    try:
        results = run_study(p, store=open_store(store), dataset=data, device=device, progress=bar,
                            backend=cluster)
    finally:
        bar.close()
        cluster.close()
    save_study(out, results)
    md, page = write_study_report(out, results, figure_formats)
    if json_output:
        echo_json({"excluded": results["excluded"], "correlations": results["correlations"],
                   "costs": results["costs"], "report": str(page)})
        return
    rows = sorted((r for r in results["correlations"] if r["gap"] == "error"),
                  key=lambda r: -abs(r["kendall"]["value"]) if r["kendall"]["value"] == r["kendall"]["value"]
                  else 1.0)
    ex = results["excluded"]
    echo(f"{ex['included']} of {ex['total']} runs reached train loss <= {p.loss_threshold:g}")
    echo(table([{"measure": r["measure"], "tau": r["kendall"]["value"], "low": r["kendall"]["low"],
                 "high": r["kendall"]["high"], "Psi": r["granulated_mean"]["value"],
                 "rho": r["spearman"]["value"]} for r in rows],
               ["measure", "tau", "low", "high", "Psi", "rho"]))
    echo(f"report: {page} (and {md})")


@app.command("report")
def report(
    out: OutOpt = Path("reports/study"),
    figure_format: FigureFormatOpt = "png,pdf,svg",
    json_output: Annotated[bool, typer.Option("--json", help="Print the files written as JSON.")] = False,
) -> None:
    """Rewrite study.md, study.html and the figures from a study's study.json."""
    from sharpminima.figstyle import parse_figure_formats
    from sharpminima.study.noise_report import KIND, write_noise_report
    from sharpminima.study.report import load_study, write_study_report

    formats = parse_figure_formats(figure_format)
    write = write_noise_report if load_study(out).get("kind") == KIND else write_study_report
    md, page = write(out, figure_formats=formats)
    if json_output:
        echo_json({"report": str(page), "markdown": str(md)})
    else:
        echo(f"report: {page} (and {md})")
