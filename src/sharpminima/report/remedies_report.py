"""Report sections and figures of the remedies experiments (what closes the gap)."""

from __future__ import annotations

import math
from typing import Any

from sharpminima.report import figures
from sharpminima.report.doc import Doc, num, pm, signed


def _mean(stats: dict[str, Any] | None) -> float | None:
    return None if not stats else stats.get("mean")


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def _epochs(epochs: list[int]) -> str:
    """``15`` when every trial ran as long, else each trial's count (``5, 7``)."""
    return str(epochs[0]) if epochs and len(set(epochs)) == 1 else ", ".join(str(e) for e in epochs) or "-"


def baselines(rem: dict[str, Any] | None, net: str) -> dict[str, dict[str, Any]] | None:
    """The remedies table's plain SB and LB rows of ``net``, or None.

    Every section of one report takes its SB and LB baseline from these rows, so one
    setting is shown from one set of runs (results written before the sweeps shared them
    kept a first-trial copy of their own).
    """
    found = {r["regime"]: r for r in (rem or {}).get(net, []) if r.get("name") == r.get("regime")}
    return found if set(found) == {"sb", "lb"} else None


def _trials_note(rows: list[dict[str, Any]]) -> str:
    counts = sorted({(r.get("test_acc") or {}).get("n") for r in rows if "skipped" not in r} - {None, 0})
    if counts == [1]:
        return "One trial per row (no spread shown)."
    many = ", ".join(str(c) for c in counts if c > 1)
    return (f"Mean ± std over {many} trials" + ("; a value without ± is one trial." if 1 in counts else "."))


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
        # Two tables, not one of ten columns: the numbers (narrow, never wrapping) and what
        # each method is and what the paper found (text).
        table, methods, not_done = [], {}, []
        for r in rows:
            methods.setdefault(r["name"], [r["name"], r["label"], r.get("paper") or "-"])
            if "skipped" in r:
                table.append([r["name"], "LB", f"skipped: {r['skipped']}", "-", "-", "-", "-", "-"])
                continue
            not_done += [f"{r['name']} {r['regime'].upper()}: {b['run']} {b['status']} ({b['message']})"
                         for b in r.get("not_done") or []]
            acc = _mean(r["test_acc"])
            gap = sb_acc - acc if sb_acc is not None and acc is not None else None
            ref = same_sb.get(r["name"]) if r["regime"] == "lb" and r["name"] != "lb" else None
            same = ref - acc if ref is not None and acc is not None else None
            table.append(
                [
                    r["name"],
                    r["regime"].upper(),
                    pm(r["test_acc"]),
                    signed(gap),
                    signed(same),
                    pm(r["sharpness"], sig=3),
                    _epochs(r["epochs"]),
                    _fmt(_mean(r["seconds"])),
                ]
            )
        doc.h(3, net.upper())
        doc.table(
            ["method", "regime", "test acc", "gap to SB", "gap to SB + method", "sharpness", "epochs",
             "s/run"],
            table,
        )
        doc.p(_trials_note(rows))
        if not_done:
            doc.p("Runs left out of the averages: " + "; ".join(not_done) + ".")
        doc.table(["method", "what it does", "what the paper found"], list(methods.values()))
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
                f"{r['name']} ({num(_mean(r['sharpness']))})"
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
                f"{net.upper()}: baseline gap SB - LB = {signed(base_gap)} points. {verdict} "
                + (
                    f"LB methods whose minima are at least 10x flatter than plain LB "
                    f"({num(lb_sharp)}): {', '.join(flatter)}."
                    if flatter
                    else "No LB method found a minimum 10x flatter than plain LB."
                )
            )
        caption = f"{net.upper()}: test accuracy and sharpness per method"
        doc.fig(figures.remedy_comparison(net, rows), f"remedies_{net}", caption)


def conservative_section(doc: Doc, cs: dict[str, Any], remedies: dict[str, Any] | None = None) -> None:
    """The lambda x inner-iterations sweep of conservative training.

    Args:
        doc: The report.
        cs: The sweep's results per network.
        remedies: The remedies table's results: its SB and LB rows are the baselines here.
    """
    doc.h(2, "Conservative training: which lambda, how many inner steps")
    doc.p(
        "Each LB step approximately solves argmin_x mean_B f_i(x) + (lambda/2)||x - x_k||^2 "
        "with a few inner Adam steps (the paper: lambda = 1e-3, 3 steps). One trial per cell. "
        "The first inner step starts at x_k, where the proximal term's gradient is 0, so a "
        "single inner step is a plain step for every lambda; lambda acts from the second on."
    )
    for net, data in cs.items():
        base = baselines(remedies, net)
        if base is not None:  # the main table's baseline runs, not a copy of their first trial
            data = {**data, "sb": base["sb"], "lb": base["lb"]}
        doc.table(
            ["lambda", "inner steps", "test acc", "train loss", "sharpness", "s/run"],
            [
                [
                    f"{r['lambda']:g}",
                    r["inner_iters"],
                    pm(r["test_acc"]),
                    num(_mean(r["train_loss"])),
                    pm(r["sharpness"], sig=3),
                    _fmt(_mean(r["seconds"])),
                ]
                for r in data["rows"]
            ]
            + [
                [f"{regime.upper()} baseline", "-", pm(data[regime]["test_acc"]),
                 num(_mean(data[regime]["train_loss"])), pm(data[regime]["sharpness"], sig=3),
                 _fmt(_mean(data[regime].get("seconds")))]
                for regime in ("sb", "lb")
            ],
        )
        if base is not None:
            doc.p("The SB and LB baselines are the runs of the remedies table above. "
                  + _trials_note([base["sb"], base["lb"]]))
        caption = f"{net.upper()}: conservative training sweep"
        doc.fig(figures.conservative_sweep(net, data), f"conservative_{net}", caption)


def init_section(doc: Doc, init: dict[str, Any], remedies: dict[str, Any] | None = None) -> None:
    """SB vs LB across initialization schemes (the default scheme is the remedies baseline)."""
    doc.h(2, "Initialization study")
    doc.p("The same SB/LB comparison from each initialization scheme and scale (one trial each; "
          "the default initialization at scale 1 is the baseline, with all its trials).")
    for net, rows in init.items():
        base = baselines(remedies, net)
        if base is not None:
            rows = [_with_baseline(r, base) if (r["init"], float(r["scale"])) == ("default", 1.0) else r
                    for r in rows]
        doc.h(3, net.upper())
        doc.table(
            ["init", "scale", "SB test acc", "LB test acc", "gap SB - LB", "SB sharpness", "LB sharpness"],
            [
                [
                    r["init"],
                    f"{r['scale']:g}",
                    pm(r["sb"]["test_acc"]),
                    pm(r["lb"]["test_acc"]),
                    signed(r["gap"]),
                    pm(r["sb"]["sharpness"], sig=3),
                    pm(r["lb"]["sharpness"], sig=3),
                ]
                for r in rows
            ],
        )


def _with_baseline(row: dict[str, Any], base: dict[str, dict[str, Any]]) -> dict[str, Any]:
    sb, lb = _mean(base["sb"]["test_acc"]), _mean(base["lb"]["test_acc"])
    return {**row, "sb": base["sb"], "lb": base["lb"],
            "gap": sb - lb if sb is not None and lb is not None else None}


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
        doc.fig(figures.dynamics(net, data), f"dynamics_{net}", f"{net.upper()}: optimization dynamics")


#: What the paper found for a method, as claims with a direction: (claim, quantity, the
#: reference row, the side the claim puts the method on, the threshold). Sharpness is
#: compared as a ratio method / reference (threshold 1), test accuracy as a difference
#: method - reference in points.
PAPER_CLAIMS: dict[str, tuple[tuple[str, str, str, str, float], ...]] = {
    "warm-start": (("LB warm-started from SB finds flatter minima than LB", "sharpness", "lb", "below",
                    1.0),),
    "conservative": (("conservative LB minima stay sharper than SB's", "sharpness", "sb", "above", 1.0),),
    "augment": (("augmented LB minima stay sharper than SB's", "sharpness", "sb", "above", 1.0),),
    **{name: ((f"{name} gives no gain over LB (at most 0.5 points)", "test_acc", "lb", "below", 0.5),)
       for name in ("adversarial", "grad-noise", "iterate-noise")},
}


def remedy_claims(rem: dict[str, Any]) -> list[list[str]]:
    """Rows ``[claim, paper, measured, verdict]`` for the paper's findings about the methods.

    Each is judged by its interval over trials (see :func:`sharpminima.intervals.judge`):
    with one trial per method there is none, and the verdict is "cannot say".
    """
    from sharpminima import intervals

    out = []
    for net, rows in rem.items():
        base = baselines(rem, net) or {}
        for r in rows:
            if r["regime"] != "lb" or "skipped" in r or r["name"] not in PAPER_CLAIMS:
                continue
            for claim, key, ref_name, side, threshold in PAPER_CLAIMS[r["name"]]:
                ref = base.get(ref_name)
                if ref is None or not (r.get(key) or {}).get("values") or not (ref.get(key) or {}).get(
                        "values"):
                    continue
                ours, theirs = r[key]["values"], ref[key]["values"]
                if key == "sharpness":
                    est = intervals.ratio(theirs, ours)
                    value = f"{num(est['value'])}x" if est["value"] is not None else "-"
                    what = f"sharpness {name_of(r)} / {ref_name.upper()} = {value}"
                    ci = est["ci"]
                    shown = None if ci is None else [num(c) for c in ci]
                else:
                    est = intervals.difference(ours, theirs)
                    what = f"test acc {name_of(r)} - {ref_name.upper()} = {signed(est['mean'])} points"
                    ci = est["ci"]
                    shown = None if ci is None else [signed(c) for c in ci]
                n = min(len([v for v in ours if v is not None]), len([v for v in theirs if v is not None]))
                what += (f", 95% interval [{shown[0]}, {shown[1]}]" if shown is not None
                         else f" ({n} trial{'s' if n != 1 else ''}: no interval)")
                out.append([f"{net.upper()}: {claim}", r.get("paper") or "-", what,
                            intervals.judge(ci, threshold, expect=side)])
    return out


def name_of(row: dict[str, Any]) -> str:
    """``LB + sam``: a method's row as the text names it."""
    return f"{row['regime'].upper()} + {row['name']}"


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
