"""The correlation study's report: Markdown + self-contained HTML, built from its results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sharpminima.errors import SharpMinimaError
from sharpminima.figstyle import DEFAULT_FIGURE_FORMATS
from sharpminima.report.doc import Doc, environment_rows

RESULTS_FILE = "study.json"


def _ci(est: dict[str, Any]) -> str:
    v = est.get("value")
    if v is None or not math.isfinite(v):
        return "-"
    lo, hi = est.get("low"), est.get("high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:+.2f}"
    return f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _abs_tau(row: dict[str, Any]) -> float:
    v = row["kendall"]["value"]
    return -1.0 if v is None or not math.isfinite(v) else abs(v)


def load_study(out: Path) -> dict[str, Any]:
    """Read ``out/study.json``.

    Raises:
        SharpMinimaError: If the folder holds no study results.
    """
    path = out / RESULTS_FILE
    if not path.exists():
        raise SharpMinimaError(f"no {RESULTS_FILE} in {out}; run `sharpminima study correlation --out {out}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SharpMinimaError(f"{path} is not valid JSON ({exc}); rerun the study") from exc


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def save_study(out: Path, results: dict[str, Any]) -> Path:
    """Write ``out/study.json`` (NaN and infinity as null)."""
    from sharpminima.store import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    atomic_write_text(path, json.dumps(_finite(results), indent=1))
    return path


def color_axis(res: dict[str, Any]) -> tuple[str | None, str | None]:
    """Grid axes for colour and marker of the scatter plots (batch size first, seed never)."""
    axes = [a for a, v in res["preset"]["grid"].items() if len(v) >= 2 and a != "seed"]
    axes.sort(key=lambda a: a != "batch_size")
    return (axes[0] if axes else None), (axes[1] if len(axes) > 1 else None)


def build_study(doc: Doc, res: dict[str, Any]) -> str:
    """Fill ``doc`` with the study's section; return the page title."""
    from sharpminima.report import study_figures as sf

    p = res["preset"]
    title = "Which measure predicts the generalization gap?"
    doc.h(1, title)
    grid = ", ".join(f"{k} ∈ {{{', '.join(str(x) for x in v)}}}" for k, v in p["grid"].items())
    ex = res["excluded"]
    other = ", ".join(f"{v} {k}" for k, v in ex.items() if k not in ("total", "included")) or "none"
    doc.p(
        f"**{p['net'].upper()} on {p['dataset']}**, preset `{p['name']}`: every run of the grid {grid} "
        f"({ex['total']} runs), each trained for {p['epochs']} epochs (fixed budget) on the first "
        f"{res['num_train']} training samples and tested on {res['num_test']} test samples. "
        f"**{ex['included']} of {ex['total']} runs** reached the criterion (final training "
        f"cross-entropy ≤ {p['loss_threshold']:g}) and enter the statistics; left out: {other}."
    )
    doc.p(
        f"Every landscape measure averages the loss over the first {res['measure_samples']} training "
        f"samples in chunks of {p['chunk_size']}. Keskar sharpness (Metric 2.1, in percent) at eps "
        f"{', '.join(f'{e:g}' for e in p['eps'])}, full space and a random {p['subspace_dim']}-dim "
        f"subspace, BatchNorm with batch statistics and with running statistics; the Hessian, average "
        f"and adaptive sharpness use BN mode `{p['hessian_bn']}`; the noise scale and PAC-Bayes "
        "flatness use running statistics. `hparam: ...` rows rank runs by a grid axis itself (the "
        "'canonical ordering' reference of Jiang et al. 2020)."
    )
    doc.p(
        "Statistics over the included runs: **Kendall's tau-b** (scipy's default variant; ties "
        "handled the same way), **Spearman's rho** (Pearson correlation of average ranks), and the "
        "**granulated tau** of Jiang et al. (ICLR 2020, arXiv:1912.02178): for each grid axis, runs "
        "that share every other axis form a group; psi(axis) is the mean Kendall tau inside the "
        "groups, and Psi the mean of psi over the axes except `seed` (a replicate). Brackets: "
        f"{100 * p['level']:.0f}% percentile bootstrap intervals, {p['num_bootstrap']} resamples of "
        f"the runs (seed {p['bootstrap_seed']}). A positive value means a larger measure goes with a "
        "larger gap."
    )
    _runs_table(doc, res)
    axes = [a for a, v in p["grid"].items() if len(v) >= 2]
    for gap in ("error", "loss"):
        rows = [r for r in res["correlations"] if r["gap"] == gap]
        rows.sort(key=_abs_tau, reverse=True)
        label = "test - train error (points)" if gap == "error" else "test - train cross-entropy"
        doc.h(2, f"Ranking by the {label} gap")
        # Two tables of at most five intervals each, so no cell wraps on a laptop screen: the
        # overall statistics, then Psi's per-axis parts.
        doc.table(["measure", "n", "Kendall tau-b", "granulated Psi", "Spearman rho"], [
            [r["measure"], r["n"], _ci(r["kendall"]), _ci(r["granulated_mean"]), _ci(r["spearman"])]
            for r in rows
        ])
        for start in range(0, len(axes), 4):
            part = axes[start:start + 4]
            doc.p(f"Granulated tau per grid axis ({', '.join(part)}), same order:")
            doc.table(["measure", *[f"psi({a})" for a in part]],
                      [[r["measure"], *[_ci(r["granulated"].get(a, {})) for a in part]] for r in rows])
        doc.fig(sf.correlation_bars(rows, gap), f"study_tau_{gap}",
                f"Kendall tau-b and granulated Psi against the {label} gap, with {100 * p['level']:.0f}% "
                "bootstrap intervals")
        color_by, marker_by = color_axis(res)
        names = [r["measure"] for r in rows]
        taus = {r["measure"]: r["kendall"]["value"] for r in rows}
        taus = {k: (math.nan if v is None else v) for k, v in taus.items()}
        fig = sf.measure_scatter(res["runs"], names, gap, color_by=color_by, marker_by=marker_by, taus=taus)
        doc.fig(fig,
                f"study_scatter_{gap}",
                f"each measure against the {label} gap (log x where a measure spans more than two "
                f"decades), colour: {color_by}, marker: {marker_by}")
    _costs(doc, res)
    _environment(doc, res)
    return title


def _runs_table(doc: Doc, res: dict[str, Any]) -> None:
    doc.h(2, "Runs")
    axes = list(res["preset"]["grid"])
    rows = []
    for r in res["runs"]:
        rows.append([
            *[r["hparams"][a] for a in axes], r["run_id"], r["epochs"], r["train_loss"], r["train_acc"],
            r["test_acc"], r.get("gap_loss"), r.get("gap_error"), "yes" if r["converged"] else r["excluded"],
        ])
    doc.table([*axes, "run", "epochs", "train loss", "train acc", "test acc", "loss gap", "error gap",
               "included"], rows)


def _costs(doc: Doc, res: dict[str, Any]) -> None:
    doc.h(2, "What each measure costs")
    doc.p(
        f"Mean per run, over the {res['measure_samples']} measure samples on {res.get('device', '?')}. "
        "Gradient passes = gradient evaluations + 2 x Hessian-vector products + loss evaluations / 3 "
        "(a forward pass); the noise scale's per-example gradients count as the fraction of the samples "
        "they cover. Measurements reused from the store keep the cost of their first computation."
    )
    order = {r["measure"]: _abs_tau(r) for r in res["correlations"] if r["gap"] == "error"}
    rows = []
    for name, c in sorted(res["costs"].items(), key=lambda kv: -order.get(kv[0], -1)):
        rows.append([name, c["seconds"], c["grad_passes"], c["num_loss"], c["num_grad"], c["num_hvp"],
                     _ci(next(r["kendall"] for r in res["correlations"]
                              if r["measure"] == name and r["gap"] == "error"))])
    doc.table(["measure", "seconds", "gradient passes", "loss evals", "gradients", "HVPs",
               "tau (error gap)"], rows)


def _environment(doc: Doc, res: dict[str, Any]) -> None:
    doc.h(2, "Machine, versions and time")
    rows = environment_rows(res.get("environment", {}))
    rows.append(["study seconds (this invocation)", f"{res.get('seconds', 0):.0f}"])
    rows.append(["training seconds (sum over runs, as first trained)",
                 f"{sum(r.get('train_seconds') or 0 for r in res['runs']):.0f}"])
    doc.table(["what", "value"], rows)


def write_study_report(
    out: Path,
    results: dict[str, Any] | None = None,
    figure_formats: tuple[str, ...] = DEFAULT_FIGURE_FORMATS,
) -> tuple[Path, Path]:
    """Write ``study.md``, ``study.html`` and the figures (PNG, PDF, SVG) into ``out``.

    Args:
        out: Output folder.
        results: The study's results (read from ``out/study.json`` if None).
        figure_formats: Files written per figure (see ``style.parse_figure_formats``).

    Returns:
        Paths of the Markdown and HTML files.
    """
    res = results if results is not None else load_study(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc(out, figure_formats=figure_formats)
    title = build_study(doc, res)
    return doc.save("study", title)
