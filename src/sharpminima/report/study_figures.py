"""Figures of the correlation study: pure functions from results data to matplotlib Figures.

Drawn in the one style of :mod:`sharpminima.figstyle`.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator

from sharpminima.figstyle import DOUBLE_COLUMN, PALETTE, new_figure, styled

GAP_LABELS = {
    "loss": "gap: test - train cross-entropy",
    "error": "gap: test - train error",
}
GAP_UNITS = {"loss": "nats", "error": "points"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: Units of the study's measures, by the start of their name (first match wins).
_UNITS = (
    ("keskar", "Keskar sharpness (%)"),
    ("final train loss", "cross-entropy (nats)"),
    ("gradient noise scale", "noise scale (samples)"),
    ("hparam: batch_size", "batch size (samples)"),
    ("hparam: lr", "learning rate"),
    ("hparam: epochs", "epochs"),
    ("hessian top", "top eigenvalue"),
    ("hessian trace", "trace"),
    ("average sharpness", "loss rise (nats)"),
    ("adaptive sharpness", "loss rise (nats)"),
    ("distance from init", "L2 distance"),
    ("weight norm", "L2 norm"),
)


def measure_axis_label(name: str) -> str:
    """The x-axis label of a measure's panel (with its unit where it has one)."""
    low = name.lower()
    for prefix, label in _UNITS:
        if low.startswith(prefix):
            return label
    return "measure value"


def spans_decades(values: list[float] | np.ndarray, decades: float = 2.0) -> bool:
    """Whether all values are positive and ``max / min`` exceeds ``10 ** decades``."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return bool(v.size >= 2 and (v > 0).all() and v.max() / v.min() > 10**decades)


@styled
def correlation_bars(rows: list[dict[str, Any]], gap: str) -> Figure:
    """Kendall tau-b and granulated Psi of each measure with their intervals (sorted by |tau|).

    Bars from zero (no association), which is a meaningful origin for a rank correlation.
    """
    rows = [r for r in rows if r["gap"] == gap]
    rows.sort(key=lambda r: -abs(_num(r["kendall"]["value"])) if math.isfinite(_num(r["kendall"]["value"]))
              else 1.0)
    fig, ax = new_figure(DOUBLE_COLUMN, 0.27 * len(rows) + 1.6)
    y = np.arange(len(rows))[::-1]
    for offset, key, color, label in ((0.19, "kendall", PALETTE[0], r"Kendall $\tau_b$"),
                                      (-0.19, "granulated_mean", PALETTE[4], r"granulated $\Psi$")):
        vals = np.array([_num(r[key]["value"]) for r in rows])
        lo = np.array([_num(r[key]["low"]) for r in rows])
        hi = np.array([_num(r[key]["high"]) for r in rows])
        err = np.vstack([np.where(np.isfinite(lo), vals - lo, 0), np.where(np.isfinite(hi), hi - vals, 0)])
        ax.barh(y + offset, np.nan_to_num(vals), 0.36, xerr=np.clip(np.nan_to_num(err), 0, None),
                color=color, label=label, capsize=2, error_kw={"lw": 0.8})
    ax.set_yticks(y, [r["measure"] for r in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"rank correlation with the {GAP_LABELS[gap].removeprefix('gap: ')} gap (95% CI)")
    ax.set_ylabel("measure")
    ax.set_title("Which measure ranks the runs by their generalization gap?\n"
                 "(> 0: a larger measure goes with a larger gap)")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside lower center", ncol=2)
    return fig


def _compact(value: float, _pos: int | None = None) -> str:
    """A tick label without an offset: ``0.0005``, ``250``, ``2e+04``."""
    if value == 0:
        return "0"
    return f"{value:g}" if 1e-4 <= abs(value) < 1e5 else f"{value:.0e}"


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


@styled
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

    The panels share the gap axis (labelled on the left of each row). Each panel's x axis
    is labelled with the measure's unit, and is logarithmic where the measure is positive
    and spans more than two decades. Colour encodes ``color_by``, marker shape
    ``marker_by`` (grid axes).

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
    ncols = max(1, min(ncols, len(measures)))
    nrows = max(1, math.ceil(len(measures) / ncols))
    fig, axes = new_figure(DOUBLE_COLUMN, 1.95 * nrows + 0.9, nrows, ncols, squeeze=False, sharey=True)
    colors, markers = _style_keys(used, color_by, marker_by)
    many = len(colors) > len(PALETTE) - 1  # a sequential map for many values, qualitative colours for few
    cmap = matplotlib.colormaps["viridis"]
    color_of = {c: cmap(i / max(1, len(colors) - 1)) if many else PALETTE[i] for i, c in enumerate(colors)}
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
                pts = [(xs[i], gaps[i]) for i in sel
                       if xs[i] is not None and math.isfinite(xs[i]) and gaps[i] is not None]
                if pts:
                    ax.scatter(*zip(*pts, strict=True), color=color_of[c], marker=marker_of[m], s=18,
                               alpha=0.85, edgecolors="black", linewidths=0.4)
        if spans_decades(xs):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(numticks=4))
        else:
            ax.locator_params(axis="x", nbins=3)
            ax.xaxis.set_major_formatter(FuncFormatter(_compact))  # no offset text over the label
        tau = None if taus is None else taus.get(name)
        title = "\n".join(textwrap.wrap(name, 22))
        if tau is not None and math.isfinite(tau):
            title += "\n" + r"$\tau_b$" + f" = {tau:+.2f}"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(measure_axis_label(name))
        if k % ncols == 0:
            ax.set_ylabel(f"{GAP_LABELS[gap].removeprefix('gap: ')} gap ({GAP_UNITS[gap]})")
    handles = []
    for c in colors if color_by else []:
        handles.append(Line2D([], [], ls="", marker="o", color=color_of[c], markeredgecolor="black",
                              label=f"{color_by} = {c}"))
    for m in markers if marker_by else []:
        handles.append(Line2D([], [], ls="", marker=marker_of[m], color="grey", label=f"{marker_by} = {m}"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6))
    fig.suptitle(f"Each measure against the {GAP_LABELS[gap].removeprefix('gap: ')} gap "
                 "(one point per included run)")
    return fig
