"""Figures of the report: each a pure function from results data to a matplotlib Figure."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLORS = {"sb": "tab:blue", "lb": "tab:red"}
LABELS = {"sb": "SB", "lb": "LB"}


def _mean_curve(histories: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(h) for h in histories)
    values = np.array([[h[i][key] for i in range(n)] for h in histories], dtype=float)
    return np.arange(1, n + 1), values.mean(axis=0)


def accuracy_per_epoch(net: str, data: dict[str, list[list[dict]]]) -> Figure:
    """Figure 2: train (solid) and test (dashed) accuracy per epoch, SB vs LB."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for regime in ("sb", "lb"):
        histories = [h for h in data.get(regime, []) if h]
        if not histories:
            continue
        for h in histories:  # each trial, thin
            ep = [r["epoch"] for r in h]
            ax.plot(ep, [r["train_acc"] for r in h], color=COLORS[regime], lw=0.6, alpha=0.35)
            ax.plot(ep, [r["test_acc"] for r in h], color=COLORS[regime], lw=0.6, alpha=0.35, ls="--")
        x, train = _mean_curve(histories, "train_acc")
        _, test = _mean_curve(histories, "test_acc")
        ax.plot(x, train, color=COLORS[regime], lw=2, label=f"{LABELS[regime]} train")
        ax.plot(x, test, color=COLORS[regime], lw=2, ls="--", label=f"{LABELS[regime]} test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{net.upper()}: accuracy per epoch (mean of trials; thin: each trial)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    lo = min([min(r["test_acc"] for r in h) for hs in data.values() for h in hs if h] + [90])
    ax.set_ylim(max(lo - 1, 0), 100.5)
    return fig


def test_accuracy_bands(net: str, data: dict[str, list[list[dict]]]) -> Figure:
    """Test accuracy per epoch, mean and +- 1 std over the trials still training, SB vs LB.

    Zoomed on the range where the two regimes meet, so that a gap of a few tenths of a
    point and the trials' spread are visible (Figure 2 shows the whole 0-100 range).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    finals = []
    for regime in ("sb", "lb"):
        histories = [h for h in data.get(regime, []) if h]
        if not histories:
            continue
        longest = max(len(h) for h in histories)
        ep, mean, std, count = [], [], [], []
        for e in range(longest):
            vals = [h[e]["test_acc"] for h in histories if len(h) > e]
            ep.append(e + 1)
            mean.append(float(np.mean(vals)))
            std.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
            count.append(len(vals))
        mean_a, std_a = np.asarray(mean), np.asarray(std)
        ax.plot(ep, mean_a, color=COLORS[regime], lw=2, label=f"{LABELS[regime]} test (mean of trials)")
        ax.fill_between(ep, mean_a - std_a, mean_a + std_a, color=COLORS[regime], alpha=0.2)
        for h in histories:  # where each trial stopped
            ax.plot(len(h), h[-1]["test_acc"], "o", color=COLORS[regime], ms=4)
            finals.append(h[-1]["test_acc"])
        finals.extend(mean[len(mean) // 4 :])
    if finals:
        ax.set_ylim(min(finals) - 0.4, max(finals) + 0.3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{net.upper()}: test accuracy, mean ± 1 std over trials (dots: where each stopped)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def parametric(net: str, result: dict[str, Any], path: str) -> Figure:
    """Figures 3 / 7: loss (left axis) and accuracy (right axis), train solid, test dashed."""
    alphas = np.asarray(result["alphas"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ax.semilogy(alphas, result["train_loss"], color="tab:blue", lw=2, label="train loss")
    if result.get("test_loss") is not None:
        ax.semilogy(alphas, result["test_loss"], color="tab:blue", lw=2, ls="--", label="test loss")
    ax.set_xlabel(r"$\alpha$" + ("  (0 = SB, 1 = LB)"))
    ax.set_ylabel("cross-entropy", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(alphas, result["train_acc"], color="tab:red", lw=2, label="train accuracy")
    if result.get("test_acc") is not None:
        ax2.plot(alphas, result["test_acc"], color="tab:red", lw=2, ls="--", label="test accuracy")
    ax2.set_ylabel("accuracy (%)", color="tab:red")
    ax2.set_ylim(0, 102)
    for a in (0.0, 1.0):
        ax.axvline(a, color="grey", lw=0.8, ls=":")
    kind = (
        "linear: $f(\\alpha x_{LB} + (1-\\alpha) x_{SB})$"
        if path == "linear"
        else "curvilinear: $f(\\sin(\\alpha\\pi/2) x_{LB} + \\cos(\\alpha\\pi/2) x_{SB})$"
    )
    ax.set_title(f"{net.upper()}, {kind}", fontsize=10)
    lines = [ln for ln in ax.get_lines() + ax2.get_lines() if not ln.get_label().startswith("_")]
    fig.legend(lines, [ln.get_label() for ln in lines], loc="outside lower center", ncol=4, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def sharpness_bars(net: str, rows: list[dict[str, Any]]) -> Figure:
    """Keskar sharpness, SB vs LB, per setting (log scale, error bars = std over trials)."""
    fig, ax = plt.subplots(figsize=(7.2, 4.0), layout="constrained")
    labels = [f"{r['subspace']}\neps={r['eps']:g}\nBN {r['bn_mode']}" for r in rows]
    x = np.arange(len(rows))
    for i, regime in enumerate(("sb", "lb")):
        means = [r[regime]["mean"] or np.nan for r in rows]
        stds = [r[regime]["std"] or 0.0 for r in rows]
        ax.bar(
            x + (i - 0.5) * 0.38,
            means,
            0.38,
            yerr=stds,
            color=COLORS[regime],
            label=LABELS[regime],
            capsize=3,
        )
    ax.set_yscale("log")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("Keskar sharpness (Metric 2.1)")
    ax.set_title(f"{net.upper()}: sharpness of SB and LB minimizers")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return fig


def stopping_study(net: str, rules: list[dict[str, Any]]) -> Figure:
    """SB - LB test-accuracy gap under different stopping rules (error bars: 95% interval)."""
    rows = [r for r in rules if r["gap"]["mean"] is not None]

    def bounds(g: dict[str, Any]) -> tuple[float, float]:
        if g.get("ci") is not None:
            return g["mean"] - g["ci"][0], g["ci"][1] - g["mean"]
        return (g.get("se") or 0.0,) * 2

    fig, ax = plt.subplots(figsize=(7.2, max(2.5, 0.32 * len(rows) + 1)), layout="constrained")
    y = np.arange(len(rows))
    gaps = [r["gap"]["mean"] for r in rows]
    ax.barh(
        y,
        gaps,
        xerr=np.array([bounds(r["gap"]) for r in rows]).T.reshape(2, len(rows)),
        color=["tab:green" if g > 0 else "tab:gray" for g in gaps],
        capsize=3,
    )
    ax.set_yticks(y, [r["rule"] for r in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("test accuracy gap SB - LB (points); > 0: LB generalizes worse")
    ax.set_title(f"{net.upper()}: the gap depends on when each regime stops")
    ax.grid(alpha=0.3, axis="x")
    return fig


def versus(net: str, rows: list[dict[str, Any]], xkey: str, xlabel: str, logx: bool) -> Figure:
    """Figures 4 / 5: test accuracy (left) and sharpness (right) against a swept quantity."""
    rows = [r for r in rows if r.get("test_acc") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    xs = [r[xkey] for r in rows]
    ax.plot(xs, [r["test_acc"] for r in rows], "o-", color="tab:blue", label="test accuracy")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)", color="tab:blue")
    if logx:
        ax.set_xscale("log")
    ax2 = ax.twinx()
    sh = [(r[xkey], r["sharpness"]) for r in rows if r.get("sharpness") is not None]
    if sh:
        ax2.semilogy(*zip(*sh, strict=True), "s--", color="tab:red", label="sharpness")
    ax2.set_ylabel("Keskar sharpness", color="tab:red")
    ax.set_title(f"{net.upper()}")
    ax.grid(alpha=0.3)
    return fig


def sharpness_vs_loss(net: str, data: dict[str, list[dict[str, Any]]]) -> Figure:
    """Figure 6: sharpness against training cross-entropy along training, SB vs LB."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for regime, points in data.items():
        if not points:
            continue
        ax.loglog(
            [p["train_loss"] for p in points],
            [p["sharpness"] for p in points],
            "o-",
            color=COLORS[regime],
            label=LABELS[regime],
        )
    ax.invert_xaxis()
    ax.set_xlabel("training cross-entropy (decreasing as training goes on)")
    ax.set_ylabel("Keskar sharpness")
    ax.set_title(f"{net.upper()}: sharpness along training")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig
