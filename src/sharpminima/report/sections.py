"""The report's content: what each section says about a reproduction's results."""

from __future__ import annotations

import math
from typing import Any

from sharpminima import intervals
from sharpminima.report import figures, paper
from sharpminima.report import remedies_report as rr
from sharpminima.report.doc import Doc, environment_rows, num, pm, pm_paper, ratio_num, signed

#: How every report cites the paper it reproduces: by its arXiv id, nothing outside the repository.
PAPER_CITATION = (
    "The paper: N. S. Keskar, D. Mudigere, J. Nocedal, M. Smelyanskiy and P. T. P. Tang, On "
    "Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima, ICLR 2017, "
    "arXiv:1609.04836. Its numbers below are from its Tables 2-4 (`src/sharpminima/report/paper.py`)."
)

OPEN_SETTINGS = [
    (
        "BatchNorm mode in sharpness and parametric plots",
        "`batch` (statistics of each chunk of the loss, as the authors' Keras-1 code did) is the "
        "headline; `eval` (running statistics) is shown beside it. Reported accuracies use eval "
        "mode (running statistics), the usual PyTorch choice.",
    ),
    (
        "Data the sharpness loss averages over",
        "the first `{samples}` training samples, mean cross-entropy, in fixed chunks of "
        "`{chunk}` (BatchNorm statistics per chunk in batch mode).",
    ),
    ("Stopping rule", "{stop}"),
    (
        "Sharpness maximisation",
        "scipy L-BFGS-B, `{max_iters}` iterations, started at y = 0; the "
        "best point evaluated inside the box is reported. A start that finds no ascent (a "
        "stationary point) is escalated to 8 more starts at random vertices and points of the "
        "box; each trial's search path is listed beside its value.",
    ),
    (
        "Random subspace",
        "p = `{p}` columns drawn as `{dist}` (U[0,1) entries scaled to unit-norm "
        "columns, as public reimplementations do), a new seed per trial; `A^+ x` via QR, no dense "
        "pseudo-inverse.",
    ),
    (
        "C1/C3 stride",
        "stride-1 'same' convolutions with 3x3/2 max-pooling (the authors' code); "
        "see `sharpminima.models.ShallowConv`.",
    ),
    (
        "Optimizer",
        "Adam, lr 1e-3, betas (0.9, 0.999), eps 1e-8 for both regimes (the authors' "
        "code), not re-tuned per batch size.",
    ),
    ("Learning rate tuned per batch size",
     "no (the paper's protocol); see Shallue et al. 2019, arXiv:1811.03600."),
]


def _ci_text(ci: list[float] | None, fmt: str = "+.2f") -> str:
    return "no interval" if ci is None else f"95% interval [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _gap_of(sb: dict[str, Any], lb: dict[str, Any]) -> dict[str, Any]:
    """SB - LB with Welch's interval from two summaries (their per-trial values)."""
    if "values" in sb and "values" in lb:
        return intervals.difference(sb["values"], lb["values"])
    se = math.sqrt((sb["std"] or 0) ** 2 / max(sb["n"], 1) + (lb["std"] or 0) ** 2 / max(lb["n"], 1))
    return {"mean": sb["mean"] - lb["mean"], "se": se, "ci": None, "n": [sb["n"], lb["n"]]}


def gap_text(g: dict[str, Any]) -> str:
    """``+0.12 [-0.30, +0.54]``: a gap and its 95% interval (or its s.e. in old results)."""
    if g.get("mean") is None:
        return "-"
    if g.get("ci") is not None:
        return f"{g['mean']:+.2f} [{g['ci'][0]:+.2f}, {g['ci'][1]:+.2f}]"
    return f"{g['mean']:+.2f}" + (f" ± {g['se']:.2f} (s.e.)" if g.get("se") else "")


def ratio_text(r: Any) -> str:
    """``9.8x [4.1, 23]``: a ratio of geometric means and its 95% interval.

    Small ratios keep three significant figures (``0.0412x``), never ``0.0x``.
    """
    if isinstance(r, int | float):  # results written before intervals: a ratio of means
        return ratio_num(float(r))
    if not r or r.get("value") is None:
        return "-" if not r or r.get("of_means") is None else f"{ratio_num(r['of_means'])} (of means)"
    text = ratio_num(r["value"])
    return text + (f" [{num(r['ci'][0])}, {num(r['ci'][1])}]" if r.get("ci") else "")


def _stop_text(p: dict[str, Any]) -> str:
    if p["stop"] == "plateau":
        return (
            f"train until the full-pass training loss has not improved by a relative "
            f"{p['min_improvement']:g} for {p['patience']} epochs (cap: SB {p['sb_epochs']}, "
            f"LB {p['lb_epochs']} epochs)"
        )
    return f"fixed budget: SB {p['sb_epochs']} epochs, LB {p['lb_epochs']} epochs"


def build_document(doc: Doc, res: dict[str, Any]) -> str:
    """Fill ``doc`` from ``res``; return the title."""
    p = res["preset"]
    ex = res.get("experiments", {})
    title = f"sharpminima reproduction of Keskar et al. (ICLR 2017), preset '{p['name']}'"
    doc.h(1, title)
    doc.p(PAPER_CITATION)
    doc.p(
        f"Networks: {', '.join(n.upper() for n in p['nets'])}; {p['trials']} "
        f"trial{'s' if p['trials'] != 1 else ''} per "
        f"regime; SB = batch 256, LB = 10% of the training set. " + _stand_in_text(res)
    )
    notes = res.get("notes") or []
    if notes:
        doc.h(2, "Notes on this output")
        for note in notes:
            doc.p(note)
    _verdict(doc, res)
    _settings(doc, res)
    if "table2" in ex:
        _table2(doc, ex["table2"])
    if "fig2" in ex:
        doc.h(2, "Figure 2: accuracy per epoch")
        for net, data in ex["fig2"].items():
            doc.fig(
                figures.accuracy_per_epoch(net, data),
                f"fig2_{net}",
                f"{net.upper()}: train (solid) and test (dashed) accuracy, SB blue, LB red",
            )
    if "sharpness" in ex:
        _sharpness(doc, ex["sharpness"], p)
    if "hessian" in ex:
        _hessian(doc, ex["hessian"])
    if "fig3" in ex:
        doc.h(2, "Figures 3 and 7: parametric plots between the SB and LB minimizers")
        doc.p(
            "25 points on alpha in [-1, 2] (alpha = 0 and 1 are evaluated exactly); "
            "training loss on the sharpness subset, test loss on the whole test set; "
            "BatchNorm in batch mode."
        )
        for net, paths in ex["fig3"].items():
            for path, result in paths.items():
                fig_num = 3 if path == "linear" else 7
                doc.fig(
                    figures.parametric(net, result, path),
                    f"fig{fig_num}_{net}",
                    f"Figure {fig_num}, {net.upper()}: {path} path from the SB (alpha=0) to the "
                    f"LB (alpha=1) minimizer; loss left (log), accuracy right",
                )
    if "distance" in ex:
        _distance(doc, ex["distance"])
    if "stopping" in ex:
        _stopping(doc, ex["stopping"], ex.get("fig2", {}))
    if "bn_test" in ex:
        _bn_test(doc, ex["bn_test"])
    if "fig4" in ex:
        doc.h(2, "Figure 4: batch size sweep")
        for net, rows in ex["fig4"].items():
            doc.table(
                ["batch size", "epochs", "train acc", "test acc", "sharpness"],
                [
                    [r["batch_size"], r["epochs"], _acc(r["train_acc"]), _acc(r["test_acc"]),
                     num(r.get("sharpness"))]
                    for r in rows
                ],
            )
            doc.fig(
                figures.versus(net, rows, "batch_size"),
                f"fig4_{net}",
                f"{net.upper()}: test accuracy and sharpness of the final iterate vs batch size",
            )

            opens = rr.gap_opens(rows)
            num_train = res.get("datasets", {}).get(net, {}).get("num_train") or 0
            where = f" ({100 * opens / num_train:.1f}% of the training set)" if opens and num_train else ""
            doc.p(
                f"{net.upper()}, the 10% question: "
                + (
                    f"test accuracy first falls more than 0.5 points below the smallest batch's "
                    f"at batch {opens}{where}."
                    if opens
                    else "no swept batch size is more than 0.5 points below the smallest batch's."
                )
            )
    if "fig5" in ex:
        doc.h(2, "Figure 5: warm-started large-batch training")
        for net, data in ex["fig5"].items():
            rows = data["rows"]
            doc.table(
                ["SB epochs before LB", "train acc", "test acc", "sharpness"],
                [[r["sb_epochs"], _acc(r["train_acc"]), _acc(r["test_acc"]), num(r.get("sharpness"))]
                 for r in rows],
            )
            doc.fig(
                figures.versus(net, rows, "sb_epochs"),
                f"fig5_{net}",
                f"{net.upper()}: LB runs started from the SB iterate after k epochs",
            )
    if "fig6" in ex:
        doc.h(2, "Figure 6: sharpness along training")
        for net, data in ex["fig6"].items():
            doc.table(
                ["regime", "epoch", "training loss", "sharpness"],
                [[regime.upper(), p.get("epoch", "-"), num(p.get("train_loss")), num(p.get("sharpness"))]
                 for regime in ("sb", "lb") for p in data.get(regime, [])],
            )
            doc.fig(
                figures.sharpness_vs_loss(net, data),
                f"fig6_{net}",
                f"{net.upper()}: sharpness vs training loss, trial 1",
            )

    if "remedies" in ex:
        rr.remedies_section(doc, ex["remedies"])
    if "conservative_sweep" in ex:
        rr.conservative_section(doc, ex["conservative_sweep"], ex.get("remedies"))
    if "init_study" in ex:
        rr.init_section(doc, ex["init_study"], ex.get("remedies"))
    if "dynamics" in ex:
        rr.dynamics_section(doc, ex["dynamics"])
    _environment(doc, res)
    return title


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _stand_in_text(res: dict[str, Any]) -> str:
    stand = [n.upper() for n, s in res.get("stand_in", {}).items() if s]
    if not stand:
        return ""
    return (
        f"**{', '.join(stand)} ran on MNIST as an offline stand-in** for their paper "
        "datasets (not comparable with the paper's numbers)."
    )


_VERDICT_RULE = (
    "**held**: the whole 95% interval is on the paper's side of the claim's threshold; "
    "**did not hold**: the whole interval is on the other side; **cannot say**: the interval "
    "contains the threshold, or one trial per setting gives no interval. Intervals are Welch t "
    "over trials (gaps), on log values (ratios), or Fisher z (rank correlations over a sweep, "
    "one run per point); the point estimate alone never decides."
)


def _claim(claim: str, paper_text: str, measured: str, verdict: str) -> list[str]:
    return [claim, paper_text, measured, verdict]


def _paper_gap(net: str, split: str) -> str:
    ref = paper.TABLE2.get(net, {})
    if f"{split}_sb" not in ref:
        return "-"
    sb, lb = ref[f"{split}_sb"][0], ref[f"{split}_lb"][0]
    return signed(sb - lb if split == "test" else lb - sb) + " points"


def _verdict(doc: Doc, res: dict[str, Any]) -> None:
    ex = res.get("experiments", {})
    doc.h(2, "Did the paper's claims hold?")
    rows = []
    for net, row in ex.get("table2", {}).items():
        sb, lb = row["sb"]["test_acc"], row["lb"]["test_acc"]
        if sb["mean"] is None or lb["mean"] is None:
            continue
        g = row.get("gap") or _gap_of(sb, lb)
        rows.append(_claim(
            f"{net.upper()}: LB tests worse than SB (Table 2)",
            f"gap SB - LB = {_paper_gap(net, 'test')}",
            f"gap SB - LB = {signed(g['mean'])} points, {_ci_text(g.get('ci'))} "
            f"(Welch t, {sb['n']}+{lb['n']} trials)",
            intervals.judge(g.get("ci"), 0.0),
        ))
        sb_tr, lb_tr = row["sb"]["train_acc"], row["lb"]["train_acc"]
        t = (intervals.difference(lb_tr["values"], sb_tr["values"]) if "values" in sb_tr and "values" in lb_tr
             else {"mean": lb_tr["mean"] - sb_tr["mean"], "ci": None})
        rows.append(_claim(
            f"{net.upper()}: LB trains as well as SB, within 0.5 points (Table 2)",
            f"train LB - SB = {_paper_gap(net, 'train')}",
            f"train acc LB - SB = {signed(t['mean'])} points, {_ci_text(t.get('ci'))}",
            intervals.judge(t.get("ci"), -0.5),
        ))
    for net, rows_bt in ex.get("bn_test", {}).items():
        authors = rows_bt[-1]  # each regime evaluated with its own batch's statistics
        g = authors["gap"]
        if g["mean"] is None:
            continue
        rows.append(_claim(
            f"{net.upper()}: LB tests worse than SB, with BatchNorm as the authors' code "
            "evaluated (batch statistics of each regime's own batch)",
            f"gap SB - LB = {_paper_gap(net, 'test')}",
            f"gap SB - LB = {signed(g['mean'])} points, {_ci_text(g.get('ci'))}",
            intervals.judge(g.get("ci"), 0.0),
        ))
    for net, srows in ex.get("sharpness", {}).items():
        for r in srows:
            if r["subspace"] == "full" and r["eps"] == 1e-3 and r["bn_mode"] == "batch" and r["ratio"]:
                rows += _ratio_claims(net, r)
    for net, by in ex.get("hessian", {}).items():
        sb, lb = by.get("sb", {}), by.get("lb", {})
        if not sb.get("top_eigenvalue") or not sb.get("trace") or None in (
            lb.get("top_eigenvalue"), lb.get("trace")
        ):
            continue
        eig, tr = lb["top_eigenvalue"] / sb["top_eigenvalue"], lb["trace"] / sb["trace"]
        rows.append(_claim(
            f"{net.upper()}: the Hessian agrees that LB is sharper (top eigenvalue and trace)",
            "- (the paper measures Metric 2.1 only)",
            f"LB/SB: top eigenvalue {eig:.2f}x, trace {tr:.2f}x (trial 1 only: no interval)",
            intervals.CANNOT_SAY,
        ))
    for net, d in ex.get("distance", {}).items():
        m = d["ratio"]["mean"]
        if m is not None:
            lo, hi = paper.DISTANCE_RATIO
            rows.append(_claim(
                f"{net.upper()}: SB moves 3-10x farther from the start than LB",
                f"{lo:g}x to {hi:g}x",
                f"ratio = {ratio_num(m)}, " + ("no interval (too few trials)" if not d["ratio"].get("ci")
                                               else f"95% interval [{num(d['ratio']['ci'][0])}, "
                                                    f"{num(d['ratio']['ci'][1])}]"),
                intervals.judge_range(d["ratio"].get("ci"), lo, hi),
            ))
    rows += _figure_verdicts(ex)
    if "remedies" in ex:

        rows += rr.remedy_claims(ex["remedies"])
    if rows:
        doc.table(["claim", "paper", "measured here", "verdict"], rows)
        doc.p(_VERDICT_RULE)
    else:
        doc.p("No experiment with a verdict has been run yet.")


def _ratio_claims(net: str, r: dict[str, Any]) -> list[list[str]]:
    """Two claims of Table 3 from the LB/SB ratio's interval: LB is sharper, and by >= 10x."""
    ref_sb, ref_lb = paper.sharpness(net, "full", 1e-3, "sb"), paper.sharpness(net, "full", 1e-3, "lb")
    theirs = f"LB/SB = {ratio_num(ref_lb[0] / ref_sb[0])}" if ref_sb and ref_lb else "-"
    ratio = r["ratio"]
    ci = None if isinstance(ratio, int | float) else ratio.get("ci")
    n = min(r["sb"]["n"], r["lb"]["n"])
    measured = (f"LB/SB = {ratio_text(ratio)} ({pm(r['lb'], sig=3)} vs {pm(r['sb'], sig=3)}; "
                f"{n} trial{'s' if n != 1 else ''} per regime)")
    return [
        _claim(f"{net.upper()}: LB minimizers are sharper than SB ones (Table 3, eps 1e-3, full space)",
               theirs, measured, intervals.judge(ci, 1.0)),
        _claim(f"{net.upper()}: LB minimizers are 10x or more sharper than SB ones (Table 3)",
               theirs, measured, intervals.judge(ci, 10.0)),
    ]


def _figure_verdicts(ex: dict[str, Any]) -> list[list[str]]:
    """Claims of Figures 4-6: sharpness and test accuracy against batch size, warm starts, training."""
    rows: list[list[str]] = []
    for net, fig_rows in ex.get("fig4", {}).items():
        pts = sorted((r for r in fig_rows if r.get("batch_size") is not None), key=lambda r: r["batch_size"])
        for key, claim, expect, noun in (
            ("sharpness", "sharpness grows with the batch size", "above", "sharpness"),
            ("test_acc", "test accuracy falls as the batch size grows", "below", "test acc"),
        ):
            sel = [r for r in pts if r.get(key) is not None]
            if len(sel) < 3:
                continue
            rc = intervals.rank_correlation([r["batch_size"] for r in sel], [r[key] for r in sel])
            if rc["value"] is None:
                continue
            fmt = _acc if key == "test_acc" else num
            ends = (f"{fmt(sel[0][key])} at {sel[0]['batch_size']}, {fmt(sel[-1][key])} at "
                    f"{sel[-1]['batch_size']}")
            rows.append(_claim(
                f"{net.upper()}: {claim} (Figure 4)",
                "yes (rank correlation " + ("> 0)" if expect == "above" else "< 0)"),
                f"Spearman rho = {signed(rc['value'])}, {_ci_text(rc['ci'])}, over {len(sel)} batch "
                f"sizes ({noun} {ends})",
                intervals.judge(rc["ci"], 0.0, expect=expect),
            ))
    for net, data in ex.get("fig5", {}).items():
        pts = sorted((r for r in data.get("rows", []) if r.get("sb_epochs") is not None),
                     key=lambda r: r["sb_epochs"])
        for key, claim, expect, noun in (
            ("sharpness", "LB started from later SB iterates finds flatter minima", "below", "sharpness"),
            ("test_acc", "LB started from later SB iterates tests better", "above", "test acc"),
        ):
            sel = [r for r in pts if r.get(key) is not None]
            if len(sel) < 2:
                continue
            rc = intervals.rank_correlation([r["sb_epochs"] for r in sel], [r[key] for r in sel])
            if rc["value"] is None:
                continue
            fmt = _acc if key == "test_acc" else num
            rows.append(_claim(
                f"{net.upper()}: {claim} (Figure 5)",
                "yes (rank correlation with SB epochs " + ("< 0)" if expect == "below" else "> 0)"),
                f"Spearman rho = {signed(rc['value'])}, {_ci_text(rc['ci'])}, over {len(sel)} starts "
                f"({noun} {fmt(sel[0][key])} from scratch, {fmt(sel[-1][key])} after "
                f"{sel[-1]['sb_epochs']} SB epochs)",
                intervals.judge(rc["ci"], 0.0, expect=expect),
            ))
    for net, by in ex.get("fig6", {}).items():
        sb = [p["sharpness"] for p in by.get("sb", []) if p.get("sharpness") is not None]
        lb = [p["sharpness"] for p in by.get("lb", []) if p.get("sharpness") is not None]
        if sb and lb:
            r = intervals.ratio(sb, lb)
            rows.append(_claim(
                f"{net.upper()}: LB iterates stay sharper than SB ones along training (Figure 6)",
                "yes",
                f"LB/SB over the measured epochs = {ratio_text(r)} (LB {num(min(lb))} to {num(max(lb))}, "
                f"SB {num(min(sb))} to {num(max(sb))})",
                intervals.judge(r["ci"], 1.0),
            ))
    return rows


def _settings(doc: Doc, res: dict[str, Any]) -> None:
    p = res["preset"]
    doc.h(2, "Settings the paper leaves open, and our choices")
    fill = {
        "samples": p["sharpness_samples"] or "all",
        "chunk": p["chunk_size"],
        "stop": _stop_text(p),
        "max_iters": p.get("max_iters", p.get("maxiter")),  # the older results call it maxiter
        "p": p["subspace_dim"],
        "dist": p["subspace_distribution"],
    }
    doc.table(["setting", "choice"], [[k, v.format(**fill)] for k, v in OPEN_SETTINGS])
    for net, d in res.get("datasets", {}).items():
        doc.p(
            f"{net.upper()} data: {d['name']} ({d['num_train']} train / {d['num_test']} test), "
            f"source: {d['source']}."
        )


def _table2(doc: Doc, t2: dict[str, Any]) -> None:
    doc.h(2, "Table 2: accuracy (mean ± std over trials)")
    counts = sorted({row[r]["test_acc"].get("n") for row in t2.values() for r in ("sb", "lb")} - {None})
    if counts:
        doc.p(f"Trials per cell: {', '.join(str(c) for c in counts)}; a cell from one trial shows "
              "its value alone (no spread).")
    rows = []
    for net, row in t2.items():
        ref = paper.TABLE2.get(net, {})
        for split in ("train", "test"):
            for regime in ("sb", "lb"):
                ours = row[regime][f"{split}_acc"]
                theirs = ref.get(f"{split}_{regime}")
                diff = (ours["mean"] - theirs[0]) if ours["mean"] is not None and theirs else None
                rows.append(
                    [
                        f"{net.upper()}{' (stand-in)' if row['stand_in'] else ''}",
                        f"{split} {regime.upper()}",
                        pm(ours),
                        pm_paper(theirs),
                        signed(diff),
                    ]
                )
    doc.table(["net", "accuracy", "ours", "paper", "ours - paper"], rows)
    for net, row in t2.items():
        doc.p(
            f"{net.upper()}: SB batch {row['sb']['batch_size']}, epochs per trial "
            f"{row['sb']['epochs']}; LB batch {row['lb']['batch_size']}, epochs "
            f"{row['lb']['epochs']}."
        )
        per_trial = [
            f"{regime.upper()} {', '.join('-' if v is None else f'{v:.2f}' for v in values)}"
            for regime in ("sb", "lb")
            if (values := row[regime]["test_acc"].get("values"))
        ]
        if per_trial:
            g = row.get("gap") or _gap_of(row["sb"]["test_acc"], row["lb"]["test_acc"])
            doc.p(f"Test accuracy per trial: {'; '.join(per_trial)}. Gap SB - LB: {gap_text(g)} "
                  "points (95% interval, Welch t).")
        bad = row["sb"]["not_done"] + row["lb"]["not_done"]
        if bad:
            doc.p(
                "Runs left out of the averages: "
                + "; ".join(f"{b['run']} {b['status']} ({b['message']})" for b in bad)
            )


def _sharpness(doc: Doc, sh: dict[str, Any], p: dict[str, Any]) -> None:
    doc.h(2, "Tables 3 and 4: Keskar sharpness (Metric 2.1)")
    doc.p(
        "Full space is Table 3 (A = I); random subspace is Table 4 (p = "
        f"{p['subspace_dim']}). Mean ± std over trials. The paper's numbers correspond to "
        "BatchNorm in batch mode: the authors' Keras-1 code normalised with each chunk's own "
        "statistics when it evaluated the loss (see the settings above, and `README.md`, section "
        "'Choices where the paper is silent')."
    )
    for net, rows in sh.items():
        table = []
        for r in rows:
            for regime in ("sb", "lb"):
                ref = (
                    paper.sharpness(net, r["subspace"], r["eps"], regime) if r["bn_mode"] == "batch" else None
                )
                table.append(
                    [
                        f"{r['subspace']}",
                        f"{r['eps']:g}",
                        r["bn_mode"],
                        regime.upper(),
                        pm(r[regime], sig=3),
                        pm_paper(ref),
                    ]
                )
            ref_sb, ref_lb = (paper.sharpness(net, r["subspace"], r["eps"], g) if r["bn_mode"] == "batch"
                              else None for g in ("sb", "lb"))
            theirs = ratio_num(ref_lb[0] / ref_sb[0]) if ref_sb and ref_lb and ref_sb[0] else "-"
            table.append(["", "", "", "LB/SB", ratio_text(r["ratio"]), theirs])
        doc.h(3, net.upper())
        doc.table(["subspace", "eps", "BN mode", "regime", "ours", "paper"], table)
        doc.p(
            "LB/SB is the ratio of the geometric means over trials with its 95% interval "
            "(Welch t on the log values); with few trials the interval is wide, and where it "
            "includes 1 another set of seeds can reverse the verdict."
        )
        _per_trial(doc, rows)
        doc.fig(
            figures.sharpness_by_setting(net, rows),
            f"sharpness_{net}",
            f"{net.upper()}: Keskar sharpness of SB and LB minimizers (log scale)",
        )


def _per_trial(doc: Doc, rows: list[dict[str, Any]]) -> None:
    """Each trial's sharpness, and how its maximum was searched."""
    table, notes = [], []
    for r in rows:
        for regime in ("sb", "lb"):
            values = r[regime].get("values", [])
            searches = r[regime].get("search", [{}] * len(values))
            for k, (v, srch) in enumerate(zip(values, searches, strict=False)):
                path = srch.get("search", "lbfgsb")
                if path != "lbfgsb":
                    notes.append(srch)
                table.append([
                    r["subspace"], f"{r['eps']:g}", r["bn_mode"], regime.upper(),
                    str(srch.get("seed", k)), num(v),
                    path + (" (starts disagree)" if srch.get("disagree") else ""),
                ])
    if not table:
        return
    doc.p("**Per trial** (the search is `lbfgsb` where L-BFGS-B ascended from y = 0, the paper's "
          "procedure; `lbfgsb+restarts` where it was stuck and more starts were searched):")
    doc.table(["subspace", "eps", "BN mode", "regime", "seed", "sharpness", "search"], table)
    for srch in notes:
        doc.p(f"Run {srch.get('run')}: {srch.get('escalation') or 'escalated'}; "
              f"{srch.get('num_starts')} starts, spread {srch.get('spread', 0.0):.3g}.")


_TRACE_NAMES = {"hutchinson": "Hutchinson", "hutch++": "Hutch++", "xtrace": "XTrace"}


def _hessian(doc: Doc, hs: dict[str, Any]) -> None:
    doc.h(2, "Hessian view beside Keskar sharpness")
    methods = sorted({_TRACE_NAMES.get(r.get("trace_method", "hutchinson"), "?")
                      for by in hs.values() for r in by.values()})
    doc.p(
        f"Top Hessian eigenvalue (Lanczos) and trace ({'/'.join(methods) or 'Hutchinson'}, ± 1 s.e.) "
        "of the same "
        "minimizers as the sharpness column (trial 1). If the measures agree, LB should be "
        "larger on all three. They need not: the Hessian is the local quadratic at the "
        "minimizer, and near zero training loss the cross-entropy Hessian shrinks with the "
        "softmax's confidence (its output block is diag(p) - pp^T), while Metric 2.1 is the "
        "largest loss rise over a finite box, which higher-order growth can dominate."
    )
    rows = []
    for net, by in hs.items():
        for regime, r in by.items():
            rows.append(
                [
                    net.upper(),
                    regime.upper(),
                    num(r["top_eigenvalue"]),
                    f"{num(r['trace'])} ± {num(r['trace_stderr'], 2)}"
                    if r.get("trace_stderr") is not None
                    else num(r["trace"]),
                    num(r["sharpness"]),
                    r["bn_mode"],
                    r["samples"],
                ]
            )
    doc.table(
        [
            "net",
            "regime",
            "top eigenvalue",
            "trace",
            f"sharpness (eps {next(iter(next(iter(hs.values())).values()))['sharpness_eps']:g})"
            if rows
            else "sharpness",
            "BN mode",
            "samples",
        ],
        rows,
    )


def _distance(doc: Doc, dist: dict[str, Any]) -> None:
    doc.h(2, "Distance from the initial weights")
    rows = [[net.upper(), pm(d["sb"]), pm(d["lb"]), pm(d["ratio"]), "3 to 10"] for net, d in dist.items()]
    doc.table(["net", "||x_SB - x0||", "||x_LB - x0||", "ratio", "paper"], rows)


def _stopping(doc: Doc, st: dict[str, Any], curves: dict[str, Any]) -> None:
    doc.h(2, "How the stopping rule decides the accuracy gap")
    doc.p(
        "The same trained runs, read at different stopping points: fixed epoch counts for each "
        "regime, or the plateau rule applied to each run's own training-loss curve. A positive "
        "gap means LB generalizes worse (the paper's claim); brackets: 95% interval over "
        "trials (Welch t)."
    )
    for net, rules in st.items():
        doc.table(
            ["rule", "SB test acc", "LB test acc", "gap SB - LB"],
            [
                [
                    r["rule"],
                    pm(r["sb"]),
                    pm(r["lb"]),
                    gap_text(r["gap"]),
                ]
                for r in rules
            ],
        )
        doc.fig(
            figures.stopping_study(net, rules),
            f"stopping_{net}",
            f"{net.upper()}: test-accuracy gap under different stopping rules",
        )
        if net in curves:
            doc.fig(
                figures.test_accuracy_bands(net, curves[net]),
                f"test_acc_{net}",
                f"{net.upper()}: test accuracy per epoch, mean and 95% interval over trials; markers show "
                "where each trial stopped",
            )


def _bn_test(doc: Doc, bt: dict[str, Any]) -> None:
    doc.h(2, "How BatchNorm at test time decides the accuracy gap")
    doc.p(
        "The same final weights of every trial, evaluated on the whole test set in several "
        "ways. Table 2 uses running statistics (PyTorch's eval mode). The authors' Keras-1 "
        "code normalised with the statistics of each evaluation batch, and Keras's `fit` "
        "validates with the training batch size, so SB was tested in batches of 256 and LB in "
        "batches of the LB size. A positive gap means LB generalizes worse; brackets: 95% "
        "interval over trials (Welch t)."
    )
    for net, rows in bt.items():
        doc.p(f"**{net.upper()}**")
        doc.table(
            ["evaluation", "SB test acc", "LB test acc", "gap SB - LB"],
            [
                [
                    r["evaluation"],
                    pm(r["sb"]),
                    pm(r["lb"]),
                    gap_text(r["gap"]),
                ]
                for r in rows
            ],
        )


def _environment(doc: Doc, res: dict[str, Any]) -> None:
    doc.h(2, "Machine, versions and time")
    rows = environment_rows(res.get("environment", {}))
    secs = res.get("seconds", {})
    rows.append(
        ["seconds per experiment (this output folder)", ", ".join(f"{k} {v:.0f}" for k, v in secs.items())]
    )
    rows.append(["training seconds (the runs this reproduction used)", f"{res.get('train_seconds', 0):.0f}"])
    rows.append(["finished at", res.get("finished_at", "-")])
    doc.table(["what", "value"], rows)
