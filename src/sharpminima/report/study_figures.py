"""Figures of the correlation study: pure functions from results data to matplotlib Figures."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

GAP_LABELS = {
    "loss": "gap: test - train cross-entropy",
    "error": "gap: test - train error (points)",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def spans_decades(values: list[float] | np.ndarray, decades: float = 2.0) -> bool:
    """Whether all values are positive and ``max / min`` exceeds ``10 ** decades``."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return bool(v.size >= 2 and (v > 0).all() and v.max() / v.min() > 10**decades)


def correlation_bars(rows: list[dict[str, Any]], gap: str) -> Figure:
    """Kendall tau-b and granulated Psi of each measure with their intervals (sorted by |tau|)."""
    rows = [r for r in rows if r["gap"] == gap]
    rows.sort(key=lambda r: -abs(_num(r["kendall"]["value"])))
    fig, ax = plt.subplots(figsize=(7.6, 0.32 * len(rows) + 1.6), layout="constrained")
    y = np.arange(len(rows))[::-1]
    for offset, key, color, label in ((0.18, "kendall", "tab:blue", r"Kendall $\tau_b$"),
                                      (-0.18, "granulated_mean", "tab:orange", r"granulated $\Psi$")):
        vals = np.array([_num(r[key]["value"]) for r in rows])
        lo = np.array([_num(r[key]["low"]) for r in rows])
        hi = np.array([_num(r[key]["high"]) for r in rows])
        err = np.vstack([np.where(np.isfinite(lo), vals - lo, 0), np.where(np.isfinite(hi), hi - vals, 0)])
        ax.barh(y + offset, np.nan_to_num(vals), 0.34, xerr=np.clip(np.nan_to_num(err), 0, None),
                color=color, label=label, capsize=2, error_kw={"lw": 0.8})
    ax.set_yticks(y, [r["measure"] for r in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"rank correlation with the {GAP_LABELS[gap].removeprefix('gap: ')} gap (95% CI)")
    ax.set_title("Which measure ranks the runs by their generalization gap?", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    return fig


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _order(v: Any) -> tuple[int, float, str]:
    """Numbers first, in numeric order; then everything else by its text."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def _style_keys(runs: list[dict[str, Any]], color_by: str | None, marker_by: str | None) -> tuple[
    list[Any], list[Any]
]:
    colors = sorted({r["hparams"].get(color_by) for r in runs}, key=_order) if color_by else [None]
    markers = sorted({r["hparams"].get(marker_by) for r in runs}, key=_order) if marker_by else [None]
    return colors, markers


def measure_scatter(
    runs: list[dict[str, Any]],
    measures: list[str],
    gap: str,
    *,
    color_by: str | None,
    marker_by: str | None = None,
    taus: dict[str, float] | None = None,
    ncols: int = 4,
) -> Figure:
    """One panel per measure: its value against the gap, one point per included run.

    The x axis is logarithmic where the measure is positive and spans more than two
    decades. Colour encodes ``color_by``, marker shape ``marker_by`` (grid axes).

    Args:
        runs: The study's runs (only those with ``converged`` are drawn).
        measures: Measure names, one panel each, in this order.
        gap: ``"loss"`` or ``"error"``.
        color_by: Grid axis for the colour.
        marker_by: Grid axis for the marker shape.
        taus: Kendall tau per measure, shown in each panel's title.
        ncols: Panels per row.
    """
    used = [r for r in runs if r["converged"]]
    nrows = max(1, math.ceil(len(measures) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.7 * nrows + 0.6),
                             layout="constrained", squeeze=False)
    colors, markers = _style_keys(used, color_by, marker_by)
    cmap = plt.get_cmap("viridis" if len(colors) > 4 else "tab10")
    many = len(colors) > 4  # a sequential map for many values, qualitative colours for few
    color_of = {c: cmap(i / max(1, len(colors) - 1)) if many else cmap(i) for i, c in enumerate(colors)}
    marker_of = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(markers)}
    gaps = [r[f"gap_{gap}"] for r in used]
    for k, ax in enumerate(axes.flat):
        if k >= len(measures):
            ax.axis("off")
            continue
        name = measures[k]
        xs = [r["measures"].get(name, {}).get("value") for r in used]
        for c in colors:
            for m in markers:
                sel = [i for i, r in enumerate(used)
                       if (color_by is None or r["hparams"].get(color_by) == c)
                       and (marker_by is None or r["hparams"].get(marker_by) == m)]
                pts = [(xs[i], gaps[i]) for i in sel if xs[i] is not None and math.isfinite(xs[i])]
                if pts:
                    ax.scatter(*zip(*pts, strict=True), color=color_of[c], marker=marker_of[m], s=26,
                               alpha=0.85, edgecolors="black", linewidths=0.4)
        if spans_decades(xs):
            ax.set_xscale("log")
        else:
            ax.locator_params(axis="x", nbins=4)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useOffset=False)
        title = name if taus is None or taus.get(name) is None or not math.isfinite(taus[name]) else (
            f"{name}\n" + r"$\tau_b$" + f" = {taus[name]:+.2f}")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel(GAP_LABELS[gap].removeprefix("gap: "), fontsize=7)
    handles = []
    for c in colors if color_by else []:
        handles.append(plt.Line2D([], [], ls="", marker="o", color=color_of[c], markeredgecolor="black",
                                  label=f"{color_by}={c}"))
    for m in markers if marker_by else []:
        handles.append(plt.Line2D([], [], ls="", marker=marker_of[m], color="grey", label=f"{marker_by}={m}"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.suptitle(f"Measure vs {GAP_LABELS[gap]} (one point per included run)", fontsize=10)
    return fig
