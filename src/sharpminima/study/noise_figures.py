"""Figures of the noise study: pure functions from its results to matplotlib Figures.

Drawn in the one style of :mod:`sharpminima.figstyle`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from sharpminima.figstyle import DOUBLE_COLUMN, PALETTE, REGIME_COLORS, new_figure, styled


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
    fig, (ax, ax2) = new_figure(DOUBLE_COLUMN, 2.8, 1, 2)
    for i, lr in enumerate(sorted({r["lr"] for r in crit["runs"]})):
        pts = [(r["batch_size"], r["steps"]) for r in crit["runs"] if r["lr"] == lr and _ok(r["steps"])]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                "o",
                color=PALETTE[(i + 2) % len(PALETTE)],
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
                ax.axvspan(ci[0], ci[1], color=PALETTE[0], alpha=0.12)
    at = (crit.get("noise_scale") or {}).get("at_target")
    if at and _ok(at["value"]) and at["value"] > 0:  # an unbiased estimate can come out negative
        ax.axvline(at["value"], color=PALETTE[2], ls=":", lw=1.0, label=f"B_simple {at['value']:.0f}")
    ax.axvline(crit["paper_batch"], color=REGIME_COLORS["lb"], ls="-.", lw=0.8, label="10% of data")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=f"steps to train loss {crit['target']:g}")
    _plain_log_ticks(ax)
    ax.legend(fontsize=7)
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
            ylabel="B_simple (samples)",
            title=f"noise scale along B={crit['noise_scale']['batch_size']}",
        )
    else:
        ax2.text(0.5, 0.5, "no noise-scale points", ha="center", va="center", transform=ax2.transAxes)
    return fig


@styled
def temperature_figure(temp: dict[str, Any]) -> Figure:
    """Test accuracy, error gap and Keskar sharpness against ``lr / B``, coloured by batch size."""
    fig, axes = new_figure(DOUBLE_COLUMN, 2.5, 1, 3)
    sizes = sorted({g["batch_size"] for g in temp["groups"]})
    for ax, key, label in zip(
        axes,
        ("test_acc", "gap_error", "sharpness"),
        ("test accuracy (%)", "train - test accuracy (points)", "Keskar sharpness (%)"),
        strict=True,
    ):
        for i, bs in enumerate(sizes):
            gs = [g for g in temp["groups"] if g["batch_size"] == bs and _ok(g[key]["mean"])]
            if not gs:
                continue
            x = np.array([g["ratio"] for g in gs]) * (1 + 0.04 * (i - (len(sizes) - 1) / 2))
            y = np.array([g[key]["mean"] for g in gs])
            lo = [g[key]["mean"] - g[key]["ci"][0] if g[key]["ci"] else 0 for g in gs]
            hi = [g[key]["ci"][1] - g[key]["mean"] if g[key]["ci"] else 0 for g in gs]
            ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color=PALETTE[i % len(PALETTE)], label=f"B={bs}")
        ax.set(xscale="log", xlabel="lr / B", ylabel=label)
    axes[0].legend()
    return fig


@styled
def structure_figure(struct: dict[str, Any]) -> Figure:
    """Keskar sharpness and test accuracy of each noise variant and of the two minima."""
    fig, axes = new_figure(DOUBLE_COLUMN, 2.6, 1, 2)
    rows = [*struct.get("reference", []), *struct.get("rows", [])]
    labels = [r["label"] for r in rows]
    for ax, key, label in zip(
        axes, ("sharpness", "test_acc"), ("Keskar sharpness (%)", "test accuracy (%)"), strict=True
    ):
        vals = [r.get(key) if _ok(r.get(key)) else 0.0 for r in rows]
        ax.barh(range(len(rows)), vals, color=[PALETTE[i % len(PALETTE)] for i in range(len(rows))])
        ax.set_yticks(range(len(rows)), labels if ax is axes[0] else [""] * len(rows))
        ax.invert_yaxis()
        ax.set_xlabel(label)
        if key == "test_acc" and any(_ok(v) and v > 0 for v in vals):
            ax.set_xlim(min(v for v in vals if v > 0) - 2, max(vals) + 1)
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
    for ax, label in zip(
        axes, ("train loss", "Keskar sharpness (%)", "top eigenvalue", "distance from start"), strict=True
    ):
        ax.set(xlabel="steps from the start", ylabel=label)
    if any(r.get("points") for r in esc["runs"]):
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
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
            r["threshold"], color="black", ls="--", lw=0.8, label=f"2(1+beta)/lr = {r['threshold']:.0f}"
        )
        ax.axhline(
            r["plain_gd_threshold"],
            color="0.5",
            ls=":",
            lw=0.8,
            label=f"2/lr = {r['plain_gd_threshold']:.0f}",
        )
    ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue", yscale="log")
    ax.legend(fontsize=7)
    return fig
