"""Report sections and figures of the remedies experiments (what closes the gap)."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from sharpminima.report.build import Doc, pm  # noqa: E402

COLORS = {"sb": "tab:blue", "lb": "tab:red"}


def _mean(stats: dict[str, Any] | None) -> float | None:
    return None if not stats else stats.get("mean")


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


# -- figures ------------------------------------------------------------------------------
def remedy_bars(net: str, rows: list[dict[str, Any]]) -> Figure:
    """Test accuracy (left) and Keskar sharpness (right, log) of every method, SB/LB coloured."""
    rows = [r for r in rows if "skipped" not in r and _mean(r.get("test_acc")) is not None]
    labels = [f"{r['name']} ({r['regime'].upper()})" for r in rows]
    y = np.arange(len(rows))
    height = max(3.0, 0.28 * len(rows) + 1.2)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, height), layout="constrained", sharey=True)
    colors = [COLORS[r["regime"]] for r in rows]
    acc = [_mean(r["test_acc"]) for r in rows]
    ax1.barh(y, acc, xerr=[r["test_acc"].get("std") or 0 for r in rows], color=colors, capsize=2)
    ax1.set_yticks(y, labels, fontsize=8)
    ax1.invert_yaxis()
    lo = min(acc) - 0.5
    ax1.set_xlim(lo, max(acc) + 0.3)
    sb = next((r for r in rows if r["name"] == "sb"), None)
    if sb is not None:
        ax1.axvline(_mean(sb["test_acc"]), color=COLORS["sb"], ls=":", lw=1, label="SB baseline")
        ax1.legend(loc="lower right", fontsize=8)
    ax1.set_xlabel("test accuracy (%)")
    ax1.grid(alpha=0.3, axis="x")
    sharp = [_mean(r.get("sharpness")) or np.nan for r in rows]
    ax2.barh(y, sharp, color=colors)
    ax2.set_xscale("log")
    ax2.set_xlabel("Keskar sharpness (log)")
    ax2.grid(alpha=0.3, axis="x", which="both")
    fig.suptitle(f"{net.upper()}: what closes the gap (blue: SB runs, red: LB runs)")
    return fig


def conservative_grid(net: str, data: dict[str, Any]) -> Figure:
    """Test accuracy and sharpness of conservative LB training against lambda."""
    rows = data["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for inner in sorted({r["inner_iters"] for r in rows}):
        sel = [r for r in rows if r["inner_iters"] == inner and _mean(r["test_acc"]) is not None]
        lams = [r["lambda"] for r in sel]
        ax1.semilogx(lams, [_mean(r["test_acc"]) for r in sel], "o-", label=f"{inner} inner steps")
        ax2.loglog(lams, [_mean(r["sharpness"]) or np.nan for r in sel], "o-", label=f"{inner} inner steps")
    for ax, key in ((ax1, "test_acc"), (ax2, "sharpness")):
        for regime in ("sb", "lb"):
            v = _mean(data[regime].get(key))
            if v is not None:
                ax.axhline(v, color=COLORS[regime], ls=":", lw=1, label=f"{regime.upper()} baseline")
        ax.set_xlabel("proximal weight lambda")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax1.set_ylabel("test accuracy (%)")
    ax2.set_ylabel("Keskar sharpness")
    fig.suptitle(f"{net.upper()}: conservative training (LB), lambda and inner iterations")
    return fig


def dynamics_panels(net: str, data: dict[str, Any]) -> Figure:
    """Noise scale, top Hessian eigenvalue (with stability lines) and sharpness per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0), layout="constrained")
    styles = {"adam": "-", "sgd": "--"}
    for run in data.values():
        pts = run["points"]
        if not pts:
            continue
        ep = [p["epoch"] for p in pts]
        ls = styles.get(run["optimizer"], "-.")
        label = f"{run['optimizer']} {run['regime'].upper()} (B={run['batch_size']})"
        color = COLORS[run["regime"]]
        axes[0].semilogy(ep, [p["noise_scale"] for p in pts], "o" + ls, color=color, label=label)
        axes[1].semilogy(ep, [p["top_eigenvalue"] for p in pts], "o" + ls, color=color, label=label)
        axes[2].semilogy(ep, [p["sharpness"] for p in pts], "o" + ls, color=color, label=label)
        line = run.get("stability_line")
        if line:
            axes[1].axhline(line, color="grey", ls=ls, lw=0.8)
    axes[0].set_ylabel("gradient noise scale B_simple")
    axes[1].set_ylabel("top Hessian eigenvalue (grey: 2(1+beta)/lr, SGD)")
    axes[2].set_ylabel("Keskar sharpness")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{net.upper()}: optimization dynamics, SB vs LB")
    return fig


# -- sections -----------------------------------------------------------------------------
def remedies_section(doc: Doc, rem: dict[str, Any]) -> None:
    """The "what closes the gap" table and figure."""
    doc.h(2, "What closes the gap: remedies and large-batch methods")
    doc.p(
        "Every method is applied on top of the LB configuration (and of SB where the "
        "comparison needs it), trained through the same loop. Gap to SB = SB baseline test "
        "accuracy minus this row's (positive: worse than SB); for methods also run at SB, the "
        "next column compares with SB under the same method, the fair reference. Sharpness: "
        "Keskar, full space, "
        "headline eps and BN mode of the preset. Seconds: training time per run."
    )
    for net, rows in rem.items():
        sb = next((r for r in rows if r["name"] == "sb"), None)
        sb_acc = _mean(sb["test_acc"]) if sb else None
        # SB under the same method, where the method was run at SB too (the fair reference).
        same_sb = {
            r["name"]: _mean(r["test_acc"]) for r in rows if r["regime"] == "sb" and "skipped" not in r
        }
        table = []
        for r in rows:
            if "skipped" in r:
                skipped = f"skipped: {r['skipped']}"
                table.append([r["name"], r["label"], "LB", "-", "-", "-", "-", "-", "-", skipped])
                continue
            acc = _mean(r["test_acc"])
            gap = sb_acc - acc if sb_acc is not None and acc is not None else None
            ref = same_sb.get(r["name"]) if r["regime"] == "lb" and r["name"] != "lb" else None
            same = ref - acc if ref is not None and acc is not None else None
            table.append(
                [
                    r["name"],
                    r["label"],
                    r["regime"].upper(),
                    pm(r["test_acc"]),
                    f"{gap:+.2f}" if gap is not None else "-",
                    f"{same:+.2f}" if same is not None else "-",
                    pm(r["sharpness"], 3),
                    ", ".join(str(e) for e in r["epochs"]),
                    _fmt(_mean(r["seconds"])),
                    r.get("paper", "") + (f"; not done: {r['not_done']}" if r.get("not_done") else ""),
                ]
            )
        doc.h(3, net.upper())
        doc.table(
            ["method", "what", "regime", "test acc", "gap to SB", "gap to SB + method", "sharpness", "epochs",
             "s/run", "paper"],
            table,
        )
        closers = [
            r["name"]
            for r in rows
            if r["regime"] == "lb" and r["name"] not in ("lb",) and "skipped" not in r
            and _mean(r["test_acc"]) is not None
            and (ref := same_sb.get(r["name"], sb_acc)) is not None
            and _mean(r["test_acc"]) >= ref - 0.05
        ]
        lb = next((r for r in rows if r["name"] == "lb"), None)
        if lb is not None and sb_acc is not None and _mean(lb["test_acc"]) is not None:
            base_gap = sb_acc - _mean(lb["test_acc"])
            lb_sharp = _mean(lb.get("sharpness"))
            flatter = [
                f"{r['name']} ({_mean(r['sharpness']):.3g})"
                for r in rows
                if r["regime"] == "lb" and r["name"] != "lb" and "skipped" not in r
                and lb_sharp and _mean(r.get("sharpness")) is not None
                and _mean(r["sharpness"]) <= lb_sharp / 10
            ]
            if base_gap <= 0:
                verdict = (
                    "LB already tests as well as SB or better here, so there is no gap to close; "
                    "read the table for what each method costs and does to sharpness."
                )
            elif closers:
                verdict = (
                    f"LB methods within 0.05 points of SB or better (SB under the same method "
                    f"where it was run at SB too): {', '.join(closers)}."
                )
            else:
                verdict = "No LB method came within 0.05 points of SB."
            doc.p(
                f"{net.upper()}: baseline gap SB - LB = {base_gap:+.2f} points. {verdict} "
                + (
                    f"LB methods whose minima are at least 10x flatter than plain LB "
                    f"({lb_sharp:.3g}): {', '.join(flatter)}."
                    if flatter
                    else "No LB method found a minimum 10x flatter than plain LB."
                )
            )
        caption = f"{net.upper()}: test accuracy and sharpness per method"
        doc.fig(remedy_bars(net, rows), f"remedies_{net}", caption)


def conservative_section(doc: Doc, cs: dict[str, Any]) -> None:
    """The lambda x inner-iterations sweep of conservative training."""
    doc.h(2, "Conservative training: which lambda, how many inner steps")
    doc.p(
        "Each LB step approximately solves argmin_x mean_B f_i(x) + (lambda/2)||x - x_k||^2 "
        "with a few inner Adam steps (the paper: lambda = 1e-3, 3 steps). One trial per cell. "
        "The first inner step starts at x_k, where the proximal term's gradient is 0, so a "
        "single inner step is a plain step for every lambda; lambda acts from the second on."
    )
    for net, data in cs.items():
        doc.table(
            ["lambda", "inner steps", "test acc", "train loss", "sharpness", "s/run"],
            [
                [
                    f"{r['lambda']:g}",
                    r["inner_iters"],
                    pm(r["test_acc"]),
                    _fmt(_mean(r["train_loss"])),
                    pm(r["sharpness"], 3),
                    _fmt(_mean(r["seconds"])),
                ]
                for r in data["rows"]
            ]
            + [
                ["SB baseline", "-", pm(data["sb"]["test_acc"]), _fmt(_mean(data["sb"]["train_loss"])),
                 pm(data["sb"]["sharpness"], 3), "-"],
                ["LB baseline", "-", pm(data["lb"]["test_acc"]), _fmt(_mean(data["lb"]["train_loss"])),
                 pm(data["lb"]["sharpness"], 3), "-"],
            ],
        )
        caption = f"{net.upper()}: conservative training sweep"
        doc.fig(conservative_grid(net, data), f"conservative_{net}", caption)


def init_section(doc: Doc, init: dict[str, Any]) -> None:
    """SB vs LB across initialization schemes."""
    doc.h(2, "Initialization study")
    doc.p("The same SB/LB comparison from each initialization scheme and scale (one trial each).")
    for net, rows in init.items():
        doc.h(3, net.upper())
        doc.table(
            ["init", "scale", "SB test acc", "LB test acc", "gap SB - LB", "SB sharpness", "LB sharpness"],
            [
                [
                    r["init"],
                    f"{r['scale']:g}",
                    pm(r["sb"]["test_acc"]),
                    pm(r["lb"]["test_acc"]),
                    f"{r['gap']:+.2f}" if r["gap"] is not None else "-",
                    pm(r["sb"]["sharpness"], 3),
                    pm(r["lb"]["sharpness"], 3),
                ]
                for r in rows
            ],
        )


def dynamics_section(doc: Doc, dyn: dict[str, Any]) -> None:
    """Where the SB and LB trajectories part."""
    doc.h(2, "Optimization dynamics: where SB and LB part")
    doc.p(
        "Along training: the gradient noise scale B_simple (per-example gradients, BN running "
        "statistics), the Hessian's top eigenvalue (Lanczos) with the heavy-ball stability "
        "line 2(1+beta)/lr for SGD runs, and Keskar sharpness (headline settings), on a "
        "stated training subset."
    )
    for net, data in dyn.items():
        rows = []
        for run in data.values():
            for pnt in run["points"]:
                rows.append(
                    [
                        run["optimizer"],
                        run["regime"].upper(),
                        pnt["epoch"],
                        _fmt(pnt["train_loss"]),
                        _fmt(pnt["noise_scale"]),
                        _fmt(pnt["top_eigenvalue"]),
                        _fmt(pnt["sharpness"]),
                    ]
                )
        doc.table(["optimizer", "regime", "epoch", "train loss", "noise scale", "top eig", "sharpness"], rows)
        doc.fig(dynamics_panels(net, data), f"dynamics_{net}", f"{net.upper()}: optimization dynamics")


def gap_opens(rows: list[dict[str, Any]], tolerance: float = 0.5) -> int | None:
    """Return the batch size where the accuracy gap opens (the 10% question).

    The smallest swept batch size whose test accuracy is more than ``tolerance`` points
    below the smallest batch size's, or None if the sweep never drops that far.
    """
    rows = sorted((r for r in rows if r.get("test_acc") is not None), key=lambda r: r["batch_size"])
    if len(rows) < 2:
        return None
    ref = rows[0]["test_acc"]
    for r in rows[1:]:
        if r["test_acc"] < ref - tolerance:
            return int(r["batch_size"])
    return None
