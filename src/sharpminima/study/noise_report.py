"""The noise study's report: Markdown + self-contained HTML from its results.

Results are kept as ``study.json`` (``kind: noise_study``) with the correlation study's
:func:`~sharpminima.study.report.save_study` and read back with its
:func:`~sharpminima.study.report.load_study`; the page is built with the reports' ``Doc``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sharpminima.errors import SharpMinimaError
from sharpminima.figstyle import DEFAULT_FIGURE_FORMATS
from sharpminima.report.doc import Doc, environment_rows, num
from sharpminima.study.report import load_study

KIND = "noise_study"


def _ok(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and math.isfinite(v)


def _n(v: Any, sig: int = 3) -> str:
    return num(v, sig) if _ok(v) else "-"


def _ci(stats: dict[str, Any] | None, sig: int = 3) -> str:
    """``mean [lo, hi]`` of an :func:`sharpminima.intervals.summary` (n=1: no interval)."""
    if not stats or not _ok(stats.get("mean")):
        return "-"
    ci = stats.get("ci")
    if not ci:
        return f"{_n(stats['mean'], sig)} (n={stats['n']})"
    return f"{_n(stats['mean'], sig)} [{_n(ci[0], sig)}, {_n(ci[1], sig)}]"


def build_noise(doc: Doc, res: dict[str, Any]) -> str:
    """Fill ``doc`` with the noise study; return the page title."""
    from sharpminima.study import noise_figures as nf

    p = res["preset"]
    title = "Why large batches find sharp minima: gradient noise and the choice of batch size"
    doc.h(1, title)
    doc.p(
        f"**{p['net'].upper()} on {p['dataset']}**, preset `{p['name']}`: the first {res['num_train']} "
        f"training samples, tested on {res['num_test']}; every landscape measure averages over the first "
        f"{res['measure_samples']} training samples with BatchNorm running statistics (Keskar sharpness at "
        f"eps {p['eps']:g}, {p['keskar_max_iters']} L-BFGS-B iterations, in percent; top Hessian "
        f"eigenvalue by Lanczos, at most {p['hessian_max_iters']} steps). Intervals: {100 * p['level']:.0f}%."
    )
    for w in res.get("warnings", []):
        doc.p(f"**Note:** {w}.")
    _critical(doc, res, nf)
    _temperature(doc, res, nf)
    _structure(doc, res, nf)
    _escape(doc, res, nf)
    _stability(doc, res, nf)
    _meaning(doc, res)
    doc.h(2, "Machine, versions and time")
    rows = environment_rows(res.get("environment", {}))
    rows.append(["study seconds (this invocation)", f"{res.get('seconds', 0):.0f}"])
    doc.table(["what", "value"], rows)
    return title


def _critical(doc: Doc, res: dict[str, Any], nf: Any) -> None:
    c, p = res["critical"], res["preset"]
    doc.h(2, "1. Which batch size: the critical batch size")
    doc.p(
        f"Each batch size trains with {p['cb_optimizer']} at each learning rate of {list(p['cb_lrs'])} "
        "(a small grid: the best of few values is only roughly tuned) for an epoch budget of about "
        f"{p['cb_max_steps']} steps ({p['cb_min_epochs']}-{p['cb_max_epochs']} epochs); the steps to the "
        f"training cross-entropy target {c['target']:g} (full pass after each epoch, interpolated "
        "log-linearly between epochs, the loss before training taken as ln(classes)) of its best "
        "learning rate enter the fit of McCandlish et al. (2018): "
        "`S(B) = S_min + E_min / B`, equivalently `(S/S_min - 1)(E/E_min - 1) = 1`, "
        "`B_crit = E_min / S_min`."
    )
    doc.table(
        ["batch", "lr", "status", "epochs", "steps/epoch", "steps to target", "final train loss", "test acc"],
        [
            [
                r["batch_size"],
                r["lr"],
                r["status"],
                r["epochs"],
                r["steps_per_epoch"],
                _n(r["steps"]) if r["steps"] is not None else "not reached",
                _n(r.get("train_loss")),
                _n(r.get("test_acc")),
            ]
            for r in c["runs"]
        ],
    )
    fit = c.get("fit")
    if fit:
        ci = fit.get("ci")
        ci_text = f"[{_n(ci[0])}, {_n(ci[1])}]" if ci else "no interval"
        doc.p(
            f"Fit over {fit['n']} batch sizes: S_min = {_n(fit['s_min'])} steps, E_min = {_n(fit['e_min'])} "
            f"samples, **B_crit = {_n(fit['b_crit'])}** (bootstrap over the points, {fit['num_bootstrap']} "
            f"resamples: {ci_text}; with so few points the interval is coarse), relative RMS residual "
            f"{_n(fit['rel_rmse'])}. The paper's 10% batch here is {c['paper_batch']} (for all of MNIST "
            f"{c['paper_batch_mnist']}); the fitted curve puts it at {_n(fit['steps_at_paper_batch'])} steps."
        )
    else:
        doc.p(f"**No fit:** {c.get('fit_note')}.")
    ns = c.get("noise_scale") or {}
    at = ns.get("at_target")
    if at:
        doc.p(
            "Gradient noise scale B_simple = tr(Sigma)/|G|^2 (per-example gradients, jackknife standard "
            f"error) along the batch-{ns['batch_size']} run (lr {ns['lr']:g}): at epoch {at['epoch']} (train "
            f"loss {_n(at['train_loss'])}, nearest the target) **B_simple = {_n(at['value'])} +- "
            f"{_n(at.get('stderr'))}**."
        )
    doc.fig(
        nf.critical_figure(c),
        "noise_critical",
        "steps to the loss target per batch size (each lr; squares: the best), the fitted trade-off, "
        "B_crit with its interval, B_simple at the target and the paper's 10% batch; right: B_simple "
        "along training",
    )


def _temperature(doc: Doc, res: dict[str, Any], nf: Any) -> None:
    t, p = res["temperature"], res["preset"]
    doc.h(2, "2. Temperature: lr / B")
    doc.p(
        f"SGD with momentum {t['momentum']:g} for {p['epochs']} epochs, learning rate = ratio x batch size "
        f"for ratios {list(p['temp_ratios'])}, seeds {list(p['seeds'])}. If lr/B alone sets the outcome "
        "(Jastrzebski et al. 2017; Smith and Le 2018), points of one ratio agree across batch sizes. "
        "Brackets: t-intervals over the seeds."
    )
    doc.table(
        ["batch", "lr/B", "lr", "test acc", "train - test acc", "Keskar sharpness"],
        [
            [
                g["batch_size"],
                g["ratio"],
                g["ratio"] * g["batch_size"],
                _ci(g["test_acc"]),
                _ci(g["gap_error"]),
                _ci(g["sharpness"]),
            ]
            for g in t["groups"]
        ],
    )
    failed = [r for r in t["runs"] if r["status"] != "done"]
    if failed:
        doc.p(
            f"{len(failed)} run(s) did not finish ({', '.join(sorted({r['status'] for r in failed}))}): "
            "left out of the means."
        )
    doc.fig(
        nf.temperature_figure(t),
        "noise_temperature",
        "test accuracy, generalization gap and Keskar sharpness against lr/B, colour: batch size",
    )


def _structure(doc: Doc, res: dict[str, Any], nf: Any) -> None:
    s, p = res["structure"], res["preset"]
    doc.h(2, "3. Noise structure")
    if not s.get("rows"):
        doc.p(f"**Not run:** {s.get('note')}.")
        return
    doc.p(
        f"From the LB minimum (batch {p['lb']}, SGD lr {p['lr']:g}, momentum {p['momentum']:g}), "
        f"{p['escape_steps']} more steps of: LB without noise; LB plus isotropic Gaussian noise with the "
        f"trace of batch-{p['sb']} noise; LB plus anisotropic noise with batch-{p['sb']} covariance "
        "(per-example gradient deviations reweighted by Gaussian weights: the `batch_noise` training "
        f"method); and plain SB (batch {p['sb']}). Same learning rate and steps; SB sees fewer samples."
    )
    rows = [*s.get("reference", []), *s["rows"]]
    doc.table(
        ["run", "steps", "train loss", "test acc", "Keskar sharpness", "top eigenvalue"],
        [
            [
                r["label"],
                r.get("steps", "-"),
                _n(r.get("train_loss")),
                _n(r.get("test_acc")),
                _n(r.get("sharpness")),
                _n(r.get("top_eigenvalue")),
            ]
            for r in rows
        ],
    )
    if s.get("alignment"):
        doc.p(
            "Alignment of SB's gradient noise with the Hessian, `tr(H Sigma) / (tr(H) tr(Sigma) / P)` "
            "(1 for isotropic noise; above 1: the noise lies along high-curvature directions, Zhu et al. "
            "2019), from Gaussian-weighted per-example gradient deviations and Rademacher probes:"
        )
        doc.table(
            ["at", "samples", "draws", "ratio", "interval over draws", "tr(H)/P"],
            [
                [
                    a["label"],
                    a["samples"],
                    a["num_draws"],
                    _n(a["ratio"]),
                    f"[{_n(a['ci'][0])}, {_n(a['ci'][1])}]" if a.get("ci") else "-",
                    _n(a["trace_h_over_p"]),
                ]
                for a in s["alignment"]
            ],
        )
    doc.fig(
        nf.structure_figure(s),
        "noise_structure",
        "Keskar sharpness and test accuracy of the two minima and of the runs from the LB minimum",
    )


def _escape(doc: Doc, res: dict[str, Any], nf: Any) -> None:
    e = res["escape"]
    doc.h(2, "4. Escape")
    doc.p(
        "SB training from the LB minimum and LB training from the SB minimum (same SGD settings); "
        "step 0 is the starting minimum."
    )
    for r in e["runs"]:
        if not r.get("points"):
            doc.p(f"{r['label']}: {r.get('note', 'no points')}.")
            continue
        doc.table(
            [
                f"{r['label']}: epoch",
                "step",
                "train loss",
                "test acc",
                "Keskar sharpness",
                "top eigenvalue",
                "distance",
            ],
            [
                [
                    q["epoch"],
                    q["step"],
                    _n(q["train_loss"]),
                    _n(q["test_acc"]),
                    _n(q["sharpness"]),
                    _n(q["top_eigenvalue"]),
                    _n(q["distance"]),
                ]
                for q in r["points"]
            ],
        )
    doc.fig(
        nf.escape_figure(e), "noise_escape", "loss, sharpness, top eigenvalue and distance from the start"
    )


def _stability(doc: Doc, res: dict[str, Any], nf: Any) -> None:
    st = res["stability"]
    doc.h(2, "5. Stability")
    doc.p(
        "Top Hessian eigenvalue along SGD training against heavy-ball momentum's threshold `2(1+beta)/lr` "
        "(and plain GD's `2/lr`); for Adam, the top eigenvalue of the preconditioned Hessian `P^-1 H` "
        "(P from Adam's bias-corrected second moments at the end of training) against "
        "`(2 + 2 beta1) / ((1 - beta1) lr)` (Cohen et al. 2022)."
    )
    doc.table(
        ["run", "batch", "epoch", "top eigenvalue", "threshold", "eigenvalue / threshold"],
        [
            [
                r["label"],
                r["batch_size"],
                q["epoch"],
                _n(q["top_eigenvalue"]),
                _n(r["threshold"]),
                _n(q["top_eigenvalue"] / r["threshold"] if _ok(q["top_eigenvalue"]) else None),
            ]
            for r in st["sgd"]
            for q in r["points"]
        ],
    )
    if st["adam"]:
        doc.table(
            [
                "Adam batch",
                "lr",
                "top eigenvalue",
                "preconditioned",
                "threshold",
                "preconditioned / threshold",
            ],
            [
                [
                    a["batch_size"],
                    a["lr"],
                    _n(a["top_eigenvalue"]),
                    _n(a.get("preconditioned")),
                    _n(a["threshold"]),
                    _n(a["preconditioned"] / a["threshold"] if _ok(a.get("preconditioned")) else None),
                ]
                for a in st["adam"]
            ],
        )
    if st["sgd"]:
        doc.fig(
            nf.stability_figure(st),
            "noise_stability",
            "top Hessian eigenvalue along SB and LB training and the stability thresholds",
        )


def meaning(res: dict[str, Any]) -> list[tuple[str, str]]:
    """One paragraph per section: what held here beside the literature's claim, and its limits."""
    out = []
    c = res["critical"]
    fit = c.get("fit")
    if fit and _ok(fit["b_crit"]):
        ci = fit.get("ci")
        ci_t = f" (interval {_n(ci[0])} to {_n(ci[1])})" if ci else ""
        side = "above" if c["paper_batch"] > fit["b_crit"] else "below"
        at = (c.get("noise_scale") or {}).get("at_target")
        bs = f"; B_simple near the target is {_n(at['value'])}" if at else ""
        settled = not ci or not (ci[0] <= c["paper_batch"] <= ci[1])
        verdict = (
            ("so it spends samples for few saved steps." if side == "above" else "so it still buys steps.")
            if settled
            else "but the interval contains it: which side it is on cannot be said here."
        )
        out.append(
            (
                "Critical batch size",
                f"Here steps stop falling beyond about B_crit = {_n(fit['b_crit'])}{ci_t}{bs}. McCandlish "
                f"et al. find B_crit ~ B_simple; the paper's 10% batch ({c['paper_batch']}) lies {side} "
                f"the estimate, {verdict}"
                + f" With {fit['n']} batch sizes, one seed and a {len(res['preset']['cb_lrs'])}-value lr "
                "grid the interval is coarse; a smaller grid spacing and more seeds would narrow it.",
            )
        )
    else:
        out.append(
            (
                "Critical batch size",
                "Cannot say: the fit needs two or more batch sizes that reach the "
                f"target ({c.get('fit_note') or c.get('warning')}).",
            )
        )
    t = res["temperature"]
    by_ratio: dict[float, list[float]] = {}
    for g in t["groups"]:
        if _ok(g["test_acc"]["mean"]):
            by_ratio.setdefault(g["ratio"], []).append(g["test_acc"]["mean"])
    spread = [max(v) - min(v) for v in by_ratio.values() if len(v) > 1]
    across = [v for vs in by_ratio.values() for v in vs]
    if spread and len(by_ratio) > 1:
        out.append(
            (
                "Temperature",
                f"At a fixed lr/B the test accuracy differs across batch sizes by up to {_n(max(spread))} "
                f"points, against {_n(max(across) - min(across))} points over the whole grid. Jastrzebski "
                "et al. and Smith and Le predict the first to be small; with "
                f"{len(res['preset']['seeds'])} seeds the intervals in the table decide whether it is "
                "distinguishable from seed noise, and with a small training set and few epochs this is "
                "a weak test of the claim.",
            )
        )
    else:
        out.append(("Temperature", "Cannot say: too few finished runs per lr/B ratio."))
    s = res["structure"]
    if s.get("rows"):
        rows = {r["label"]: r for r in s["rows"]}
        iso, ani, none = (
            rows.get(k, {}) for k in ("LB + isotropic noise", "LB + anisotropic noise", "LB, no noise")
        )
        al = {a["label"]: a for a in s.get("alignment", [])}
        lbal = al.get("LB minimum", {})
        out.append(
            (
                "Noise structure",
                f"From the LB minimum, Keskar sharpness after {res['preset']['escape_steps']} steps: "
                f"no noise {_n(none.get('sharpness'))}, isotropic {_n(iso.get('sharpness'))}, anisotropic "
                f"{_n(ani.get('sharpness'))}; test accuracy {_n(none.get('test_acc'))}, "
                f"{_n(iso.get('test_acc'))}, {_n(ani.get('test_acc'))}. The alignment ratio at the LB "
                f"minimum is {_n(lbal.get('ratio'))} (1 = isotropic). Zhu et al. claim only the "
                "anisotropic noise escapes sharp minima; with one seed and one short run per variant "
                "this setting cannot say whether these differences would repeat.",
            )
        )
    else:
        out.append(("Noise structure", f"Cannot say: {s.get('note')}."))
    e = res["escape"]
    texts = []
    for r in e["runs"]:
        pts = r.get("points") or []
        if len(pts) >= 2:
            texts.append(
                f"{r['label']}: sharpness {_n(pts[0]['sharpness'])} -> {_n(pts[-1]['sharpness'])}, top "
                f"eigenvalue {_n(pts[0]['top_eigenvalue'])} -> {_n(pts[-1]['top_eigenvalue'])}, distance "
                f"{_n(pts[-1]['distance'])} in {pts[-1]['step']} steps"
            )
    out.append(
        (
            "Escape",
            (
                "; ".join(texts) + ". Keskar et al. report that SB leaves LB's sharp minima and LB "
                "stays near SB's flat ones; a single run each says which way it went here, not how "
                "reliably."
            )
            if texts
            else "Cannot say: no escape run finished.",
        )
    )
    st = res["stability"]
    parts = []
    for r in st["sgd"]:
        vals = [q["top_eigenvalue"] for q in r["points"] if _ok(q["top_eigenvalue"])]
        if vals:
            parts.append(f"{r['label']} peaks at {_n(max(vals) / r['threshold'])} of 2(1+beta)/lr")
    for a in st["adam"]:
        if _ok(a.get("preconditioned")):
            parts.append(
                f"Adam at B={a['batch_size']} ends at {_n(a['preconditioned'] / a['threshold'])} of its "
                "preconditioned threshold"
            )
    out.append(
        (
            "Stability",
            (
                "; ".join(parts) + ". Cohen et al. find full-batch training rises to the threshold "
                "and hovers there (the edge of stability) while small batches stay below it; "
                "with few epochs and Lanczos steps this CPU setting shows the trend, not the "
                "hovering."
            )
            if parts
            else "Cannot say: no eigenvalue was measured.",
        )
    )
    return out


def _meaning(doc: Doc, res: dict[str, Any]) -> None:
    doc.h(2, "6. What it means")
    for head, text in meaning(res):
        doc.p(f"**{head}.** {text}")


def load_noise(out: Path) -> dict[str, Any]:
    """Read a noise study's ``out/study.json``.

    Raises:
        SharpMinimaError: If the folder holds no noise-study results.
    """
    res = load_study(out)
    if res.get("kind") != KIND:
        raise SharpMinimaError(
            f"{out}/study.json is not a noise study; run `sharpminima study noise --out {out}`"
        )
    return res


def write_noise_report(
    out: Path,
    results: dict[str, Any] | None = None,
    figure_formats: tuple[str, ...] = DEFAULT_FIGURE_FORMATS,
) -> tuple[Path, Path]:
    """Write ``study.md``, ``study.html`` and the figures into ``out``.

    Args:
        out: Output folder.
        results: The study's results (read from ``out/study.json`` if None).
        figure_formats: Files written per figure.

    Returns:
        Paths of the Markdown and HTML files.
    """
    res = results if results is not None else load_noise(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc(out, figure_formats=figure_formats)
    title = build_noise(doc, res)
    return doc.save("study", title)
