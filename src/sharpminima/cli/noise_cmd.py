"""``sharpminima study noise``: gradient noise, the critical batch size and sharp minima."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from sharpminima.cli.common import WorkProgress, echo, echo_json, open_store
from sharpminima.cli.reproduce_cmd import FigureFormatOpt


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    from sharpminima.errors import ConfigError

    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what} must be positive integers, got {text!r}")
    return values


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    from sharpminima.errors import ConfigError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{what} must be positive numbers, got {text!r}")
    return values


def noise(
    preset: Annotated[
        str, typer.Option(help="quick (2-core CPU, about 20 min) or full (one GPU, hours).")
    ] = "quick",
    net: Annotated[str | None, typer.Option(help="Network (default: the preset's, f1).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: mnist).")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Train on the first N training samples.")] = None,
    test_limit: Annotated[int | None, typer.Option(help="Test on the first N test samples.")] = None,
    batch_sizes: Annotated[
        str | None, typer.Option(help="Section 1's batch sizes, comma-separated (e.g. 32,128,512,1024).")
    ] = None,
    lrs: Annotated[str | None, typer.Option(help="Section 1's learning rates, comma-separated.")] = None,
    loss_target: Annotated[float | None, typer.Option(help="Section 1's training-loss target.")] = None,
    sb: Annotated[int | None, typer.Option(help="Small batch of sections 3-5.")] = None,
    lb: Annotated[int | None, typer.Option(help="Large batch of sections 3-5.")] = None,
    measure_samples: Annotated[
        int | None, typer.Option(help="Training samples every landscape measure averages over.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: auto).")] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for study.json, study.md and study.html.")
    ] = Path("reports/noise-study"),
    store: Annotated[
        Path | None, typer.Option("--store", help="Run store folder (default $SHARPMINIMA_STORE or ./runs).")
    ] = None,
    figure_format: FigureFormatOpt = "png,pdf,svg",
    json_output: Annotated[bool, typer.Option("--json", help="Print the headline numbers as JSON.")] = False,
) -> None:
    """Why LB finds sharp minima: critical batch size, temperature, noise structure, escape, stability."""
    from sharpminima.data import load
    from sharpminima.figstyle import parse_figure_formats
    from sharpminima.study.noise import get_noise_preset, plan_noise, run_noise_study
    from sharpminima.study.noise_report import write_noise_report
    from sharpminima.study.report import save_study

    figure_formats = parse_figure_formats(figure_format)  # before any work
    changes: dict[str, Any] = {
        "net": net.lower() if net and ":" not in net else net,
        "dataset": dataset,
        "train_limit": train_limit,
        "test_limit": test_limit,
        "cb_batch_sizes": _ints(batch_sizes, "--batch-sizes"),
        "cb_lrs": _floats(lrs, "--lrs"),
        "loss_target": loss_target,
        "sb": sb,
        "lb": lb,
        "measure_samples": measure_samples,
    }
    p = get_noise_preset(preset, **changes)
    if any(v is not None for v in changes.values()):
        p = p.replace(name=f"{p.name} (modified)")
    data = load(p.dataset)
    plan = plan_noise(p, data.num_train)
    for warning in plan["warnings"]:
        echo(f"warning: {warning}")
    bar = WorkProgress(f"noise study {p.name}", plan["total"])
    try:
        results = run_noise_study(p, store=open_store(store), dataset=data, device=device, progress=bar)
    finally:
        bar.close()
    save_study(out, results)
    md, page = write_noise_report(out, results, figure_formats)
    crit = results["critical"]
    fit = crit.get("fit") or {}
    at = (crit.get("noise_scale") or {}).get("at_target") or {}
    if json_output:
        echo_json(
            {
                "warnings": results["warnings"],
                "b_crit": fit.get("b_crit"),
                "b_crit_ci": fit.get("ci"),
                "b_simple": at.get("value"),
                "report": str(page),
            }
        )
        return
    for warning in results["warnings"][len(plan["warnings"]) :]:
        echo(f"warning: {warning}")
    if fit:
        ci = fit.get("ci")
        ci_text = f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "none"
        echo(
            f"B_crit = {fit['b_crit']:.4g} (interval {ci_text}); B_simple at the target = "
            f"{at.get('value', float('nan')):.4g}; paper's 10% batch = {crit['paper_batch']}"
        )
    else:
        echo(f"B_crit: cannot say ({crit.get('fit_note')})")
    echo(f"report: {page} (and {md})")


def register(app: typer.Typer) -> None:
    """Add ``noise`` to the ``study`` command group."""
    app.command("noise")(noise)
