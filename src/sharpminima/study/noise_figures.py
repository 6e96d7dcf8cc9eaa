"""Figures of the noise study: pure functions from its results to matplotlib Figures.

Drawn in the one style of :mod:`sharpminima.figstyle`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from sharpminima.figstyle import DOUBLE_COLUMN, PALETTE, REGIME_COLORS, new_figure, styled
from sharpminima.report.figures import _trials_and_mean, center_and_interval, trial_values


def _ok(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def _plain_log_ticks(ax: Any) -> None:
    """Major ticks as plain numbers (``128``, not ``1.28 x 10^2``), no minor labels."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


@styled
def critical_figure(crit: dict[str, Any]) -> Figure:
    """Steps to the target against batch size with the fitted trade-off, and ``B_simple`` along training."""
    fig, (ax, ax2) = new_figure(DOUBLE_COLUMN, 3.4, 1, 2)
    for i, lr in enumerate(sorted({r["lr"] for r in crit["runs"]})):
        pts = [(r["batch_size"], r["steps"]) for r in crit["runs"] if r["lr"] == lr and _ok(r["steps"])]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                "o",
                color=PALETTE[3 + i % (len(PALETTE) - 3)],  # 0-2 are the fit, B_simple and LB lines
                alpha=0.5,
                label=f"lr {lr:g}",
            )
    best = crit["per_batch"]
    if best:
        ax.plot(
            [r["batch_size"] for r in best],
            [r["steps"] for r in best],
            "s",
            color="black",
            mfc="none",
            label="best lr",
        )
    fit = crit.get("fit")
    if fit:
        bs = np.geomspace(min(r["batch_size"] for r in best), max(r["batch_size"] for r in best), 50)
        ax.plot(bs, fit["s_min"] + fit["e_min"] / bs, "-", color=PALETTE[0], label="S_min + E_min / B")
        if _ok(fit["b_crit"]):
            ax.axvline(fit["b_crit"], color=PALETTE[0], ls="--", lw=0.8, label=f"B_crit {fit['b_crit']:.0f}")
            ci = fit.get("ci")
            if ci and all(_ok(c) for c in ci):
                ax.axvspan(ci[0], ci[1], color=PALETTE[0], alpha=0.12, label="B_crit, 95% CI")
    at = (crit.get("noise_scale") or {}).get("at_target")
    if at and _ok(at["value"]) and at["value"] > 0:  # an unbiased estimate can come out negative
        ax.axvline(at["value"], color=PALETTE[2], ls=":", lw=1.0, label=f"B_simple {at['value']:.0f}")
    ax.axvline(crit["paper_batch"], color=REGIME_COLORS["lb"], ls="-.", lw=0.8, label="10% of data")
    ax.set(xscale="log", yscale="log", xlabel="batch size (samples)", ylabel="optimizer steps to the target",
           title=f"steps to training loss {crit['target']:g} nats")
    _plain_log_ticks(ax)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=4)
    pts = (crit.get("noise_scale") or {}).get("points") or []
    if pts:
        ax2.errorbar(
            [q["epoch"] for q in pts],
            [q["value"] for q in pts],
            yerr=[q["stderr"] if _ok(q.get("stderr")) else 0 for q in pts],
            fmt="o-",
            color=PALETTE[2],
        )
        ax2.set(
            xlabel="epoch",
            ylabel="B_simple (samples), ±1 s.e.",
            title=f"noise scale along training (B={crit['noise_scale']['batch_size']})",
        )
    else:
        ax2.text(0.5, 0.5, "no noise-scale points", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_title("noise scale along training")
    fig.suptitle("Critical batch size: steps to a loss target, and the gradient noise scale")
    return fig


@styled
def temperature_figure(temp: dict[str, Any]) -> Figure:
    """Test accuracy, error gap and Keskar sharpness against ``lr / B``, coloured by batch size.

    Each run a hollow point, the mean of the runs with its 95% interval; sharpness on a log
    axis, with the geometric mean and an interval computed on the log values.
    """
    fig, axes = new_figure(DOUBLE_COLUMN, 2.7, 1, 3)
    sizes = sorted({g["batch_size"] for g in temp["groups"]})
    for ax, key, label in zip(
        axes,
        ("test_acc", "gap_error", "sharpness"),
        ("test accuracy (%)", "accuracy gap train − test (points)", "Keskar sharpness (%)"),
        strict=True,
    ):
        log = key == "sharpness"
        for i, bs in enumerate(sizes):
            color = PALETTE[i % len(PALETTE)]
            shift = 1 + 0.04 * (i - (len(sizes) - 1) / 2)  # batch sizes side by side
            centres = []
            for g in (g for g in temp["groups"] if g["batch_size"] == bs):
                vals = [v for v in trial_values(g[key]) if v > 0 or not log]
                if not vals:
                    continue
                x = g["ratio"] * shift
                _trials_and_mean(ax, x, vals, color, "o", log=log, spread=0.0)
                centres.append((x, center_and_interval(vals, log=log)[0]))
            if centres:
                ax.plot(*zip(*centres, strict=True), "-", color=color, label=f"B={bs}")
        ax.set(xscale="log", xlabel="lr / B (per sample)", ylabel=label, title=label.split(" (")[0])
        ratios = sorted({g["ratio"] for g in temp["groups"]})
        ax.set_xticks(ratios, [f"{r:.2g}" for r in ratios])  # the study's ratios, not decades
        ax.xaxis.set_minor_locator(NullLocator())
        if log:
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend([*handles, *_run_and_mean_entries()],
               [*labels, "each run", "mean (geometric for sharpness), 95% CI"],
               loc="outside lower center", ncols=len(handles) + 2)
    fig.suptitle("Noise temperature: accuracy, gap and sharpness against lr / B")
    return fig


def _run_and_mean_entries() -> list[Line2D]:
    return [Line2D([], [], ls="", marker="o", mfc="none", mec="0.3", ms=4),
            Line2D([], [], ls="-", marker="o", color="0.3", ms=4)]


@styled
def structure_figure(struct: dict[str, Any]) -> Figure:
    """Keskar sharpness and test accuracy of each noise variant and of the two minima.

    One point per row (no bars: neither an accuracy axis nor a log sharpness axis has a
    meaningful zero), coloured by regime (squares: the two minima); sharpness on a log axis
    where every value is positive; "n/a" where a value is missing.
    """
    fig, axes = new_figure(DOUBLE_COLUMN, 2.6, 1, 2, sharey=True)
    reference = struct.get("reference", [])
    rows = [*reference, *struct.get("rows", [])]
    y = np.arange(len(rows))
    for ax, key, label in zip(
        axes, ("sharpness", "test_acc"), ("Keskar sharpness (%)", "test accuracy (%)"), strict=True
    ):
        vals = [r.get(key) if _ok(r.get(key)) else np.nan for r in rows]
        log = key == "sharpness" and any(v > 0 for v in vals) and not any(v <= 0 for v in vals)
        for k, (r, v) in enumerate(zip(rows, vals, strict=True)):
            regime = "sb" if r["label"].startswith("SB") else "lb"
            marker = "s" if k < len(reference) else "o"  # squares: the two minima
            if math.isfinite(v):
                ax.plot([v], [y[k]], marker, color=REGIME_COLORS[regime])
            else:
                ax.text(0.02, y[k], "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
        if log:
            ax.set_xscale("log")
        ax.set(xlabel=label, title=label.split(" (")[0])
    axes[0].set_yticks(y, [r["label"] for r in rows])
    axes[0].set_ylabel("minimum, or run from the LB minimum")
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    fig.suptitle("Noise structure: the two minima, and LB runs from the LB minimum with added noise")
    return fig


@styled
def escape_figure(esc: dict[str, Any]) -> Figure:
    """Loss, sharpness, top eigenvalue and distance per step of the two escape runs."""
    fig, axes = new_figure(DOUBLE_COLUMN, 2.7, 1, 4)
    for i, r in enumerate(esc["runs"]):
        pts = r.get("points") or []
        if not pts:
            continue
        x = [q["step"] for q in pts]
        for ax, key in zip(axes, ("train_loss", "sharpness", "top_eigenvalue", "distance"), strict=True):
            ax.plot(
                x,
                [q.get(key) if _ok(q.get(key)) else np.nan for q in pts],
                "o-",
                color=PALETTE[i % len(PALETTE)],
                label=r["label"],
            )
    for ax, title, label in zip(
        axes,
        ("loss", "Keskar sharpness", "curvature", "distance"),
        ("training loss (nats)", "Keskar sharpness (%)", "top Hessian eigenvalue",
         "distance from the start (L2)"),
        strict=True,
    ):
        ax.set(xlabel="steps from the start", ylabel=label, title=title)
    if any(r.get("points") for r in esc["runs"]):
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    fig.suptitle("Escaping each minimum: training from the other regime's minimum")
    return fig


@styled
def stability_figure(stab: dict[str, Any]) -> Figure:
    """Top Hessian eigenvalue along SB and LB SGD training against the stability threshold."""
    fig, ax = new_figure(DOUBLE_COLUMN / 2 + 0.4, 2.6)
    for r in stab["sgd"]:
        pts = r["points"]
        color = REGIME_COLORS["sb" if r["label"] == "SB" else "lb"]
        ax.plot(
            [q["epoch"] for q in pts],
            [q["top_eigenvalue"] for q in pts],
            "o-",
            color=color,
            label=f"{r['label']} (B={r['batch_size']})",
        )
    if stab["sgd"]:
        r = stab["sgd"][0]
        ax.axhline(
            r["threshold"], color="black", ls="--", lw=0.8, label=f"2(1+β)/lr = {r['threshold']:.0f}"
        )
        ax.axhline(
            r["plain_gd_threshold"],
            color="0.5",
            ls=":",
            lw=0.8,
            label=f"2/lr = {r['plain_gd_threshold']:.0f}",
        )
    ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue", yscale="log",
           title="SGD: top Hessian eigenvalue against\nthe stability thresholds")
    ax.legend()
    return fig
