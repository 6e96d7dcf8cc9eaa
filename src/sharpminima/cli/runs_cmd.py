"""``sharpminima runs list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sharpminima.cli.common import echo, echo_json, open_store, table

app = typer.Typer(help="Inspect the run store.", no_args_is_help=True)
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
]


def _row(record: Any) -> dict[str, Any]:
    c, s = record.config, record.summary or {}
    return {
        "run_id": record.id,
        "status": record.observed_status(),  # a running run whose process died: interrupted
        "kind": record.kind,
        "net": c.get("net"),
        "dataset": c.get("dataset"),
        "batch_size": c.get("batch_size"),
        "optimizer": c.get("optimizer"),
        "lr": c.get("lr"),
        "seed": c.get("seed"),
        "epochs": s.get("epochs"),
        "train_acc": s.get("train_acc"),
        "test_acc": s.get("test_acc"),
        "train_loss": s.get("train_loss"),
        "test_loss": s.get("test_loss"),
        "created_at": record.created_at,
        "message": record.message,
    }


@app.command("list")
def list_runs(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List runs with their final metrics."""
    st = open_store(store, read_only=True)
    observed = status in ("running", "interrupted")  # a running run whose process died is interrupted
    records = st.list_runs(status=None if observed else status)
    if observed:
        records = [r for r in records if r.observed_status().split()[0] == status]
    rows = [_row(r) for r in records]
    if json_output:
        echo_json(rows)
    elif not rows:
        echo("no runs yet; start one with `sharpminima train`")
    else:
        echo(
            table(
                rows,
                [
                    "run_id",
                    "status",
                    "net",
                    "dataset",
                    "batch_size",
                    "seed",
                    "epochs",
                    "train_acc",
                    "test_acc",
                    "train_loss",
                    "created_at",
                ],
            )
        )


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one run: config, per-epoch metrics and measurements."""
    st = open_store(store, read_only=True)
    record = st.get_run(run_id)
    epochs = st.epochs(record.id)
    measurements = st.measurements(run_id=record.id)
    if json_output:
        out = record.to_dict()
        out.update(_row(record))
        out["epochs"] = epochs
        out["measurements"] = measurements
        echo_json(out)
        return
    echo(f"run {record.id} ({record.observed_status()}{': ' + record.message if record.message else ''})")
    echo(f"created {record.created_at}, code {record.code_version}")
    echo("config: " + ", ".join(f"{k}={v}" for k, v in record.config.items()))
    if epochs:
        echo(table(epochs, ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]))
    if measurements:
        echo("measurements:")
        echo(
            table(
                [{"kind": m["kind"], "value": m["value"], "params": m["params"]} for m in measurements],
                ["kind", "value", "params"],
            )
        )


@app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="Output file, e.g. runs.csv or runs.parquet.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv or parquet (default: from the file's suffix).")
    ] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    store: StoreOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write every run as one table row (config, status, results, measures) to CSV or Parquet."""
    from sharpminima.store.table import export_runs

    count = export_runs(open_store(store, read_only=True), out, fmt, status=status)
    if json_output:
        echo_json({"path": str(out), "runs": count})
    else:
        echo(f"wrote {count} runs to {out}")
