"""Figures of the reports: each a pure function from results data to a matplotlib Figure.

Every figure is drawn in the one style of :mod:`sharpminima.figstyle` (sizes for a
two-column paper) and shows the spread of its trials: each trial as a point, over the mean
and its 95% t-interval (:func:`sharpminima.intervals.summary`). On a logarithmic axis
(Keskar sharpness) the centre is the geometric mean and the interval is computed on the
log values and mapped back, so it never runs below zero. Bars appear only where zero is a
meaningful origin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sharpminima import intervals
from sharpminima.figstyle import (
    DOUBLE_COLUMN,
    REGIME_COLORS,
    REGIME_LABELS,
    REGIME_MARKERS,
    SINGLE_COLUMN,
    net_name,
    new_figure,
    styled,
)

COLORS = REGIME_COLORS
LABELS = REGIME_LABELS
#: Axis labels with their units, one spelling for every figure.
SHARPNESS_LABEL = "Keskar sharpness (%)"
ACCURACY_LABEL = "accuracy (%)"
TEST_ACCURACY_LABEL = "test accuracy (%)"
LOSS_LABEL = "cross-entropy loss (nats)"
GAP_LABEL = "test-accuracy gap SB − LB (points)"


def _mean_curve(histories: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(h) for h in histories)
    values = np.array([[h[i][key] for i in range(n)] for h in histories], dtype=float)
    return np.arange(1, n + 1), values.mean(axis=0)


def trial_values(stats: Any) -> list[float]:
    """The finite per-trial values of a summary (``{"values": [...]}``), a list or a number."""
    if stats is None:
        return []
    if isinstance(stats, dict):
        raw = stats.get("values")
        if raw is None:  # an old summary without its values: its mean stands for it
            raw = [stats.get("mean")]
    elif isinstance(stats, int | float):
        raw = [stats]
    else:
        raw = list(stats)
    return [float(v) for v in raw if v is not None and math.isfinite(float(v))]


def center_and_interval(values: Sequence[float], *, log: bool) -> tuple[float, float | None, float | None]:
    """The centre of ``values`` and its 95% t-interval (None, None for fewer than two values).

    With ``log`` the centre is the geometric mean and the interval the t-interval of the
    mean log mapped back by ``exp`` (non-positive values are left out): an interval for a
    quantity drawn on a logarithmic axis, positive by construction.

    Raises:
        ValueError: If no value is left to summarise.
    """
    vals = [v for v in values if v > 0] if log else list(values)
    if not vals:
        raise ValueError("no value to summarise" + (" (none is positive)" if log else ""))
    s = intervals.summary([math.log(v) for v in vals] if log else vals)
    back = math.exp if log else float
    lo, hi = (None, None) if s["ci"] is None else (back(s["ci"][0]), back(s["ci"][1]))
    return back(s["mean"]), lo, hi


def _trials_and_mean(
    ax: Axes,
    pos: float,
    values: Sequence[float],
    color: str,
    marker: str,
    *,
    log: bool,
    horizontal: bool = False,
    label: str | None = None,
    spread: float = 0.12,
) -> None:
    """Draw each trial as a hollow point and the mean (geometric for ``log``) with its interval."""
    vals = [v for v in values if v > 0] if log else list(values)
    if not vals:
        return
    offsets = np.linspace(-spread, spread, len(vals)) if len(vals) > 1 else np.zeros(1)
    where = pos + offsets
    xy = (vals, where) if horizontal else (where, vals)
    ax.scatter(*xy, s=12, facecolors="none", edgecolors=color, linewidths=0.7, alpha=0.8, zorder=2)
    center, lo, hi = center_and_interval(vals, log=log)
    err = None if lo is None or hi is None else [[center - lo], [hi - center]]
    kw: dict[str, Any] = {"xerr": err} if horizontal else {"yerr": err}
    xy1 = ([center], [pos]) if horizontal else ([pos], [center])
    ax.errorbar(*xy1, **kw, fmt=marker, color=color, ms=5, elinewidth=1.2, capsize=3, zorder=3, label=label)


def _trials_legend_entries(color: str = "0.3") -> list[Line2D]:
    """Legend proxies explaining the point-and-interval encoding."""
    return [
        Line2D([], [], ls="", marker="o", mfc="none", mec=color, ms=4, label="each trial"),
        Line2D([], [], ls="-", marker="o", color=color, ms=4, label="mean, 95% CI"),
    ]


@styled
def accuracy_per_epoch(net: str, data: dict[str, list[list[dict]]]) -> Figure:
    """Figure 2: train (solid) and test (dashed) accuracy per epoch, SB vs LB.

    Thick lines: the mean over trials (up to the shortest trial); thin lines: each trial.
    """
    fig, ax = new_figure(SINGLE_COLUMN, 2.9)
    for regime in ("sb", "lb"):
        histories = [h for h in data.get(regime, []) if h]
        if not histories:
            continue
        for h in histories:  # each trial, thin
            ep = [r["epoch"] for r in h]
            ax.plot(ep, [r["train_acc"] for r in h], color=COLORS[regime], lw=0.5, alpha=0.35)
            ax.plot(ep, [r["test_acc"] for r in h], color=COLORS[regime], lw=0.5, alpha=0.35, ls="--")
        x, train = _mean_curve(histories, "train_acc")
        _, test = _mean_curve(histories, "test_acc")
        every = max(1, len(x) // 8)
        ax.plot(x, train, color=COLORS[regime], lw=1.6, marker=REGIME_MARKERS[regime], markevery=every,
                label=f"{LABELS[regime]} train")
        ax.plot(x, test, color=COLORS[regime], lw=1.6, ls="--", marker=REGIME_MARKERS[regime], mfc="white",
                markevery=every, label=f"{LABELS[regime]} test")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ACCURACY_LABEL)
    ax.set_title(f"{net_name(net)}: accuracy per epoch\n(mean of trials; thin lines: each trial)")
    ax.legend(loc="lower right", ncol=2)
    lo = min([min(r["test_acc"] for r in h) for hs in data.values() for h in hs if h] + [90])
    ax.set_ylim(max(lo - 1, 0), 100.5)
    return fig


@styled
def test_accuracy_bands(net: str, data: dict[str, list[list[dict]]]) -> Figure:
    """Test accuracy per epoch: mean and 95% t-interval over the trials still training, SB vs LB.

    Zoomed on the range where the two regimes meet, so that a gap of a few tenths of a
    point and the trials' spread are visible (Figure 2 shows the whole 0-100 range). A dot
    marks where each trial stopped.
    """
    fig, ax = new_figure(SINGLE_COLUMN, 3.1)
    finals: list[float] = []
    handles: dict[str, Any] = {}
    for regime in ("sb", "lb"):
        histories = [h for h in data.get(regime, []) if h]
        if not histories:
            continue
        ep, mean, lo, hi = [], [], [], []
        for e in range(max(len(h) for h in histories)):
            s = intervals.summary([h[e]["test_acc"] for h in histories if len(h) > e])
            ep.append(e + 1)
            mean.append(s["mean"])
            lo.append(s["ci"][0] if s["ci"] else s["mean"])
            hi.append(s["ci"][1] if s["ci"] else s["mean"])
        line = ax.plot(ep, mean, color=COLORS[regime], lw=1.6, label=f"{LABELS[regime]} mean, 95% CI")[0]
        band = ax.fill_between(ep, lo, hi, color=COLORS[regime], alpha=0.2, lw=0)
        ax.plot([len(h) for h in histories], [h[-1]["test_acc"] for h in histories], ls="",
                marker=REGIME_MARKERS[regime], color=COLORS[regime], ms=4,
                label=f"{LABELS[regime]}: a trial stops")
        handles[line.get_label()] = (band, line)
        finals.extend(h[-1]["test_acc"] for h in histories)
        finals.extend(mean[len(mean) // 4 :])
    if finals:
        ax.set_ylim(min(finals) - 0.4, max(finals) + 0.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(TEST_ACCURACY_LABEL)
    ax.set_title(f"{net_name(net)}: test accuracy per epoch\n(mean and 95% CI over trials)")
    for h, name in zip(*ax.get_legend_handles_labels(), strict=True):
        handles.setdefault(name, h)
    order = sorted(handles, key=lambda name: (name[:2] != "SB", name))  # SB column, then LB
    fig.legend([handles[n] for n in order], order, loc="outside lower center", ncol=2)
    return fig


@styled
def parametric(net: str, result: dict[str, Any], path: str, ends: tuple[str, str] = ("SB", "LB")) -> Figure:
    """Figures 3 / 7: loss (left, log) and accuracy (right) on a path between two minimizers.

    Train solid, test dashed; one legend for both axes.

    Args:
        net: Network name (``f1`` is shown as F1) or any title prefix, shown as given.
        result: ``alphas``, ``train_loss``, ``train_acc`` and optionally ``test_loss``,
            ``test_acc`` (an interpolation result's dict).
        path: ``linear`` or ``curvilinear``.
        ends: Names of the two ends (alpha = 0 and alpha = 1).
    """
    a, b = ends
    alphas = np.asarray(result["alphas"], dtype=float)
    fig, ax = new_figure(SINGLE_COLUMN, 3.1)
    loss_color, acc_color = "#0072B2", "#D55E00"
    ax.semilogy(alphas, result["train_loss"], color=loss_color, lw=1.5, label="train loss")
    if result.get("test_loss") is not None:
        ax.semilogy(alphas, result["test_loss"], color=loss_color, lw=1.5, ls="--", label="test loss")
    ax.set_xlabel(rf"$\alpha$ (0 = {a}, 1 = {b})")
    ax.set_ylabel(LOSS_LABEL, color=loss_color)
    ax.tick_params(axis="y", colors=loss_color)
    ax2 = ax.twinx()
    ax2.grid(False)
    ax2.plot(alphas, result["train_acc"], color=acc_color, lw=1.5, marker="^", markevery=3, ms=3,
             label="train accuracy")
    if result.get("test_acc") is not None:
        ax2.plot(alphas, result["test_acc"], color=acc_color, lw=1.5, ls="--", marker="^", mfc="white",
                 markevery=3, ms=3, label="test accuracy")
    ax2.set_ylabel(ACCURACY_LABEL, color=acc_color)
    ax2.tick_params(axis="y", colors=acc_color)
    ax2.set_ylim(0, 102)
    for end in (0.0, 1.0):
        ax.axvline(end, color="grey", lw=0.8, ls=":")
    formula = (
        rf"$f(\alpha\,x_{{{b}}} + (1-\alpha)\,x_{{{a}}})$"
        if path == "linear"
        else rf"$f(\sin(\alpha\pi/2)\,x_{{{b}}} + \cos(\alpha\pi/2)\,x_{{{a}}})$"
    )
    ax.set_title(f"{net_name(net)}: loss and accuracy, {path} path\n{formula}")
    lines = [ln for ln in ax.get_lines() + ax2.get_lines() if not ln.get_label().startswith("_")]
    fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", ncol=2)
    return fig


def _setting_label(r: dict[str, Any]) -> str:
    return f"{r['subspace']}\nε={r['eps']:g}\nBN {r['bn_mode']}"


@styled
def sharpness_by_setting(net: str, rows: list[dict[str, Any]]) -> Figure:
    """Tables 3 / 4 as a figure: Keskar sharpness of SB and LB minimizers per setting.

    Log axis; each trial a hollow point, the geometric mean with its 95% interval computed
    on the log values (never below zero).
    """
    width = SINGLE_COLUMN if len(rows) <= 4 else DOUBLE_COLUMN
    fig, ax = new_figure(width, 3.0)
    x = np.arange(len(rows))
    for i, regime in enumerate(("sb", "lb")):
        for k, r in enumerate(rows):
            _trials_and_mean(ax, x[k] + (i - 0.5) * 0.36, trial_values(r.get(regime)), COLORS[regime],
                             REGIME_MARKERS[regime], log=True, spread=0.08,
                             label=LABELS[regime] if k == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(x, [_setting_label(r) for r in rows])
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("setting (subspace, box size ε, BatchNorm mode)")
    ax.set_ylabel(SHARPNESS_LABEL)
    ax.set_title(f"{net_name(net)}: Keskar sharpness, SB vs LB\n(geometric mean, 95% CI on log values)")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _trials_legend_entries()[:1], loc="best")
    ax.grid(axis="x", visible=False)
    return fig


_FIXED_RULE = re.compile(r"^SB (\d+) ep / LB (\d+) ep$")
_PLATEAU_RULE = re.compile(r"^plateau, patience (\d+)$")


def _gap_interval(g: dict[str, Any]) -> tuple[float | None, float | None]:
    if g.get("ci") is not None:
        return g["ci"][0], g["ci"][1]
    return None, None


@styled
def stopping_study(net: str, rules: list[dict[str, Any]]) -> Figure:
    """The SB - LB test-accuracy gap under each stopping rule.

    Left: a heat map over (SB epochs, LB epochs) of the fixed-budget rules, each cell
    annotated with its gap (bold where the 95% Welch interval excludes 0). Its colour scale
    is clipped to the 75th percentile of |gap|, so that the few cells where one regime has
    barely trained do not wash out the rest (their numbers are still printed). Right: the
    plateau rule per patience, the gap with its 95% interval.
    """
    fixed: dict[tuple[int, int], dict[str, Any]] = {}
    plateau: list[tuple[int, dict[str, Any]]] = []
    for r in rules:
        if r["gap"].get("mean") is None:
            continue
        if m := _FIXED_RULE.match(r["rule"]):
            fixed[(int(m[1]), int(m[2]))] = r["gap"]
        elif m := _PLATEAU_RULE.match(r["rule"]):
            plateau.append((int(m[1]), r["gap"]))
    panels = [p for p, present in (("heat", fixed), ("plateau", plateau)) if present] or ["heat"]
    if len(panels) == 2:
        fig, (ax_heat, ax_plat) = new_figure(DOUBLE_COLUMN, 3.3, 1, 2, width_ratios=[2.3, 1])
    else:
        fig, ax = new_figure(SINGLE_COLUMN if panels == ["plateau"] else DOUBLE_COLUMN * 0.7, 3.3)
        ax_heat, ax_plat = (ax, None) if panels == ["heat"] else (None, ax)
    if ax_heat is not None:
        _stopping_heat_map(fig, ax_heat, fixed)
    if ax_plat is not None:
        plateau.sort()
        y = np.arange(len(plateau))
        for k, (_, g) in enumerate(plateau):
            lo, hi = _gap_interval(g)
            err = None if lo is None or hi is None else [[g["mean"] - lo], [hi - g["mean"]]]
            ax_plat.errorbar([g["mean"]], [y[k]], xerr=err, fmt="o", color="0.2", capsize=3,
                             label="gap, 95% CI" if k == 0 else None)
        ax_plat.axvline(0, color="black", lw=0.8)
        ax_plat.set_yticks(y, [str(p) for p, _ in plateau])
        ax_plat.set_ylim(-0.6, len(plateau) - 0.4)
        ax_plat.set_ylabel("plateau patience (epochs)")
        ax_plat.set_xlabel("gap SB − LB (points)")
        ax_plat.set_title("plateau rule on the\ntraining loss (95% CI)")
    fig.suptitle(f"{net_name(net)}: the SB − LB test-accuracy gap depends on when each regime stops"
                 " (> 0: LB generalizes worse)")
    return fig


def _stopping_heat_map(fig: Figure, ax: Axes, fixed: dict[tuple[int, int], dict[str, Any]]) -> None:
    ax.set_xlabel("LB stopped after (epochs)")
    ax.set_ylabel("SB stopped after (epochs)")
    if not fixed:
        ax.text(0.5, 0.5, "no stopping rule has results in both regimes", transform=ax.transAxes,
                ha="center", va="center")
        ax.set_title("fixed epoch budgets")
        return
    sbs = sorted({k[0] for k in fixed})
    lbs = sorted({k[1] for k in fixed})
    grid = np.full((len(sbs), len(lbs)), np.nan)
    for (e_sb, e_lb), g in fixed.items():
        grid[sbs.index(e_sb), lbs.index(e_lb)] = g["mean"]
    finite = np.abs(grid[np.isfinite(grid)])
    vmax = max(float(np.percentile(finite, 75)) if finite.size else 1.0, 0.1)
    norm = Normalize(-vmax, vmax)
    image = ax.imshow(grid, cmap="RdBu_r", norm=norm, origin="lower", aspect="auto")
    clipped = finite.size and float(finite.max()) > vmax
    bar = fig.colorbar(image, ax=ax, extend="both" if clipped else "neither", shrink=0.9)
    bar.set_label(GAP_LABEL)
    any_ci = False
    for (e_sb, e_lb), g in fixed.items():
        i, j = sbs.index(e_sb), lbs.index(e_lb)
        lo, hi = _gap_interval(g)
        settled = lo is not None and hi is not None and (lo > 0 or hi < 0)
        any_ci = any_ci or lo is not None
        dark = abs(g["mean"]) > 0.6 * vmax
        ax.text(j, i, f"{g['mean']:+.1f}", ha="center", va="center", fontsize=8,
                fontweight="bold" if settled else "normal", color="white" if dark else "black")
    ax.set_xticks(range(len(lbs)), [str(e) for e in lbs])
    ax.set_yticks(range(len(sbs)), [str(e) for e in sbs])
    ax.grid(False)
    ax.set_title("fixed epoch budgets: gap per cell (points)"
                 + ("\nbold: the 95% CI excludes 0" if any_ci else ""))


_VERSUS = {
    "batch_size": ("batch size (samples)", True, "batch size"),
    "sb_epochs": ("SB epochs before the switch to LB (epochs)", False, "SB warm-start epochs"),
}


@styled
def versus(
    net: str, rows: list[dict[str, Any]], xkey: str, xlabel: str | None = None, logx: bool | None = None
) -> Figure:
    """Figures 4 / 5: test accuracy (left) and Keskar sharpness (right, log) against a swept quantity.

    A value may be a number or a summary with per-trial ``values`` (then the trials are
    drawn with the mean and its 95% interval). One legend for both axes.

    Args:
        net: Network name.
        rows: One dict per swept value: ``xkey``, ``test_acc``, ``sharpness``.
        xkey: The swept key (``batch_size`` and ``sb_epochs`` have labels and scales built in).
        xlabel: The x axis label, with its unit (default: built in for ``xkey``).
        logx: Logarithmic x axis (default: built in for ``xkey``).
    """
    label, log_default, short = _VERSUS.get(xkey, (xkey, False, xkey))
    xlabel = label if xlabel is None else xlabel
    logx = log_default if logx is None else logx
    rows = [r for r in rows if trial_values(r.get("test_acc"))]
    fig, ax = new_figure(SINGLE_COLUMN, 3.1)
    acc_color, sharp_color = "#0072B2", "#D55E00"
    xs = [r[xkey] for r in rows]
    acc = [center_and_interval(trial_values(r["test_acc"]), log=False) for r in rows]
    _line_with_intervals(ax, xs, acc, acc_color, "o", "-", "test accuracy")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(TEST_ACCURACY_LABEL, color=acc_color)
    ax.tick_params(axis="y", colors=acc_color)
    if logx:
        ax.set_xscale("log")
    ax2 = ax.twinx()
    ax2.grid(False)
    sh = [(r[xkey], center_and_interval(trial_values(r["sharpness"]), log=True)) for r in rows
          if [v for v in trial_values(r.get("sharpness")) if v > 0]]
    if sh:
        _line_with_intervals(ax2, [x for x, _ in sh], [c for _, c in sh], sharp_color, "s", "--",
                             "Keskar sharpness")
        ax2.set_yscale("log")
    ax2.set_ylabel(SHARPNESS_LABEL, color=sharp_color)
    ax2.tick_params(axis="y", colors=sharp_color)
    ax.set_title(f"{net_name(net)}: test accuracy and Keskar sharpness\nof the final iterate vs {short}")
    lines = [ln for ln in ax.get_lines() + ax2.get_lines() if not ln.get_label().startswith("_")]
    fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", ncol=2)
    return fig


def _line_with_intervals(
    ax: Axes,
    xs: Sequence[float],
    centers: Sequence[tuple[float, float | None, float | None]],
    color: str,
    marker: str,
    ls: str,
    label: str,
) -> None:
    """A line through the centres, with error bars where an interval exists."""
    ys = [c for c, _, _ in centers]
    ax.plot(xs, ys, marker=marker, ls=ls, color=color, label=label)
    with_ci = [(x, c, lo, hi) for x, (c, lo, hi) in zip(xs, centers, strict=True) if lo is not None]
    if with_ci:
        x, c, lo, hi = (np.asarray(v, dtype=float) for v in zip(*with_ci, strict=True))
        ax.errorbar(x, c, yerr=[c - lo, hi - c], fmt="none", ecolor=color, capsize=3)


@styled
def sharpness_vs_loss(net: str, data: dict[str, list[dict[str, Any]]]) -> Figure:
    """Figure 6: Keskar sharpness against training cross-entropy along training, SB vs LB.

    The loss axis is inverted so that training runs left to right; the first and last
    measured epochs are labelled.
    """
    fig, ax = new_figure(SINGLE_COLUMN, 2.9)
    for regime, points in data.items():
        points = [p for p in points if p.get("sharpness") and p["sharpness"] > 0 and p["train_loss"] > 0]
        if not points:
            continue
        loss = [p["train_loss"] for p in points]
        sharp = [p["sharpness"] for p in points]
        ax.loglog(loss, sharp, marker=REGIME_MARKERS.get(regime, "o"), ls="-", color=COLORS.get(regime),
                  label=LABELS.get(regime, regime))
        ends = points[:1] + points[1:][-1:]  # the first and the last point, once each
        for p in (q for q in ends if "epoch" in q):
            ax.annotate(f"epoch {p['epoch']}", (p["train_loss"], p["sharpness"]), textcoords="offset points",
                        xytext=(0, 5), fontsize=8, color=COLORS.get(regime))
    # room above the highest point for its label (8 pt, 5 pt above the point): on a plot about
    # 2 in tall that is about a tenth of the height, so widen the log range by a fifth
    lo, hi = ax.get_ylim()
    if ax.texts and 0 < lo < hi:
        ax.set_ylim(lo, hi * (hi / lo) ** 0.2)
    ax.invert_xaxis()
    for label in ax.texts:  # each label runs towards the middle, so none crosses the frame
        where = ax.transAxes.inverted().transform(ax.transData.transform(label.xy))[0]  # type: ignore[attr-defined]
        left = where < 0.5
        label.set_horizontalalignment("left" if left else "right")
        label.set_position((3 if left else -3, 5))
    ax.set_xlabel(f"training {LOSS_LABEL} (decreasing →)")
    ax.set_ylabel(SHARPNESS_LABEL)
    ax.set_title(f"{net_name(net)}: Keskar sharpness along training")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig


# -- the remedies report ----------------------------------------------------------------
@styled
def remedy_comparison(net: str, rows: list[dict[str, Any]]) -> Figure:
    """Test accuracy (left) and Keskar sharpness (right, log) of every method, SB and LB coloured.

    Each trial a hollow point; the mean (geometric for sharpness) with its 95% interval.
    The dotted line is the SB baseline's mean test accuracy.
    """
    rows = [r for r in rows if "skipped" not in r and trial_values(r.get("test_acc"))]
    labels = [f"{r['name']} ({r['regime'].upper()})" for r in rows]
    y = np.arange(len(rows))
    fig, (ax1, ax2) = new_figure(DOUBLE_COLUMN, max(2.6, 0.24 * len(rows) + 1.5), 1, 2, sharey=True)
    for k, r in enumerate(rows):
        color, marker = COLORS[r["regime"]], REGIME_MARKERS[r["regime"]]
        _trials_and_mean(ax1, y[k], trial_values(r["test_acc"]), color, marker, log=False, horizontal=True,
                         spread=0.15)
        _trials_and_mean(ax2, y[k], trial_values(r.get("sharpness")), color, marker, log=True,
                         horizontal=True, spread=0.15)
    ax1.set_yticks(y, labels)
    ax1.set_ylim(len(rows) - 0.5, -0.5)  # the first method on top
    sb = next((r for r in rows if r["name"] == "sb"), None)
    handles = [Line2D([], [], ls="", marker=REGIME_MARKERS[g], color=COLORS[g], label=f"{LABELS[g]} runs")
               for g in ("sb", "lb")] + _trials_legend_entries()
    if sb is not None:
        base = center_and_interval(trial_values(sb["test_acc"]), log=False)[0]
        handles.append(ax1.axvline(base, color=COLORS["sb"], ls=":", lw=1, label="SB baseline mean"))
    ax1.set_xlabel(TEST_ACCURACY_LABEL)
    ax1.set_ylabel("method (regime)")
    ax1.set_title("test accuracy\n(mean, 95% CI)")
    ax2.set_xscale("log")
    ax2.set_xlabel(SHARPNESS_LABEL)
    ax2.set_title("Keskar sharpness\n(geometric mean, 95% CI)")
    ax2.grid(which="both", axis="x", alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    fig.suptitle(f"{net_name(net)}: what closes the gap, each method on top of LB (or SB)")
    return fig


def _mean_of(stats: Any, *, log: bool = False) -> tuple[float, float | None, float | None] | None:
    vals = trial_values(stats)
    if log:
        vals = [v for v in vals if v > 0]
    return center_and_interval(vals, log=log) if vals else None


@styled
def conservative_sweep(net: str, data: dict[str, Any]) -> Figure:
    """Conservative (proximal) LB training: test accuracy and sharpness against lambda.

    One line per number of inner steps; the SB and LB baselines as horizontal lines.
    """
    rows = data["rows"]
    fig, (ax1, ax2) = new_figure(DOUBLE_COLUMN, 2.9, 1, 2)
    markers = ("o", "^", "D", "v", "P")
    for k, inner in enumerate(sorted({r["inner_iters"] for r in rows})):
        for ax, key, log in ((ax1, "test_acc", False), (ax2, "sharpness", True)):
            pts = [(r["lambda"], c) for r in rows if r["inner_iters"] == inner
                   and (c := _mean_of(r.get(key), log=log)) is not None]
            if pts:
                _line_with_intervals(ax, [x for x, _ in pts], [c for _, c in pts], f"C{k + 2}",
                                     markers[k % len(markers)], "-", f"LB, {inner} inner steps")
    for ax, key, log in ((ax1, "test_acc", False), (ax2, "sharpness", True)):
        for regime in ("sb", "lb"):
            c = _mean_of(data.get(regime, {}).get(key), log=log)
            if c is not None:
                ax.axhline(c[0], color=COLORS[regime], ls=":", lw=1.2, label=f"{LABELS[regime]} baseline")
        ax.set_xscale("log")
        ax.set_xlabel("proximal weight λ")
        ax.grid(which="both", alpha=0.3)
    ax2.set_yscale("log")
    ax1.set_ylabel(TEST_ACCURACY_LABEL)
    ax2.set_ylabel(SHARPNESS_LABEL)
    ax1.set_title("test accuracy")
    ax2.set_title("Keskar sharpness")
    handles, names = ax1.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(handles), 4))
    fig.suptitle(f"{net_name(net)}: conservative LB training, proximal weight λ and inner steps")
    return fig


_OPTIMIZER_STYLE = {"adam": ("-", "o"), "sgd": ("--", "^")}


@styled
def dynamics(net: str, data: dict[str, Any]) -> Figure:
    """Along training: gradient noise scale, top Hessian eigenvalue and Keskar sharpness per epoch.

    Colour: regime; line style and marker: optimizer; one legend for the three panels. The
    top-eigenvalue panel draws each SGD run's heavy-ball stability line ``2(1+beta)/lr``.
    """
    fig, axes = new_figure(DOUBLE_COLUMN, 2.9, 1, 3)
    keys = (("noise_scale", "gradient noise scale", r"$B_{simple}$ (samples)"),
            ("top_eigenvalue", "top Hessian eigenvalue", r"$\lambda_{max}$ of the Hessian"),
            ("sharpness", "Keskar sharpness", SHARPNESS_LABEL))
    stability = False
    for run in data.values():
        pts = run["points"]
        if not pts:
            continue
        ls, marker = _OPTIMIZER_STYLE.get(run["optimizer"], ("-.", "D"))
        color = COLORS.get(run["regime"], "0.3")
        label = f"{run['optimizer']} {run['regime'].upper()} (B={run['batch_size']})"
        ep = [p["epoch"] for p in pts]
        for ax, (key, _, _) in zip(axes, keys, strict=True):
            vals = [p.get(key) for p in pts]
            xy = [(e, v) for e, v in zip(ep, vals, strict=True) if v is not None and v > 0]
            if xy:
                ax.semilogy(*zip(*xy, strict=True), ls=ls, marker=marker, color=color, label=label)
        if run.get("stability_line"):
            stability = True
            axes[1].axhline(run["stability_line"], color=color, ls=":", lw=1)
    for ax, (_, title, ylabel) in zip(axes, keys, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # runs missing from the first panel
        for h, n in zip(*ax.get_legend_handles_labels(), strict=True):
            if n not in names:
                handles.append(h)
                names.append(n)
    if stability:
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1))
        names.append("SGD stability line 2(1+β)/lr")
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(handles), 4))
    fig.suptitle(f"{net_name(net)}: optimization dynamics, SB vs LB")
    return fig
