"""The paper's experiments, each a function of a :class:`Context` returning JSON-able data.

Every training run and every measurement goes through the run store, so an interrupted
reproduction picks up where it stopped and nothing finished is done twice. The report is
drawn from the returned data alone (see :mod:`sharpminima.report`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sharpminima.config import regime_batch_size
from sharpminima.landscape.objective import flatten_params
from sharpminima.landscape.registry import Record
from sharpminima.reproduce import remedies
from sharpminima.reproduce.common import (
    REGIMES,
    done,
    gap,
    measure_sharpness,
    ratio,
    sharpness_units,
    stats,
    trial_runs,
)
from sharpminima.reproduce.context import Context, train_units
from sharpminima.train import Run

Experiment = Callable[[Context], dict[str, Any]]


# -- Table 2 and Figure 2 ----------------------------------------------------------------
def table2(ctx: Context) -> dict[str, Any]:
    """Train and test accuracy of SB and LB, mean +- std over trials (Table 2)."""
    out: dict[str, Any] = {}
    for net in ctx.preset.nets:
        runs = trial_runs(ctx, net)
        row: dict[str, Any] = {"dataset": ctx.dataset_name(net), "stand_in": ctx.stand_in(net)}
        for regime in REGIMES:
            rs = runs[regime]
            row[regime] = {
                m: stats([r.final.get(m) for r in done(rs)])
                for m in ("train_acc", "test_acc", "train_loss", "test_loss")
            }
            row[regime]["batch_size"] = rs[0].config.batch_size
            row[regime]["epochs"] = [r.epochs for r in rs]
            row[regime]["runs"] = [r.id for r in rs]
            row[regime]["not_done"] = [
                {"run": r.id, "status": r.status, "message": r.message} for r in rs if r.status != "done"
            ]
            row[regime]["seconds"] = [r.seconds for r in rs]
        row["gap"] = gap(row["sb"]["test_acc"], row["lb"]["test_acc"])
        out[net] = row
    return out


def fig2(ctx: Context) -> dict[str, Any]:
    """Accuracy and loss per epoch for every trial (Figure 2)."""
    out: dict[str, Any] = {}
    for net in ctx.preset.nets:
        runs = trial_runs(ctx, net)
        out[net] = {regime: [r.history for r in runs[regime]] for regime in REGIMES}
    return out


def stopping(ctx: Context) -> dict[str, Any]:
    """How the stopping rule decides the gap, from the recorded per-epoch histories.

    For each rule (fixed epoch counts for SB and LB, or the plateau rule with several
    patiences applied to each run's own training-loss curve), the test accuracy each run
    would have ended with, and the SB - LB gap with its spread over trials.
    """
    from sharpminima.train.loop import StopState

    out: dict[str, Any] = {}
    for net in ctx.preset.nets:
        runs = trial_runs(ctx, net)
        hist = {r: [run.history for run in done(runs[r])] for r in REGIMES}
        rules: list[dict[str, Any]] = []

        def at(history: list[dict], epoch: int) -> float | None:
            return history[epoch - 1]["test_acc"] if len(history) >= epoch else None

        max_sb = min((len(h) for h in hist["sb"]), default=0)
        max_lb = min((len(h) for h in hist["lb"]), default=0)
        for e_sb in sorted({e for e in (1, 2, 5, 10, 20, 50, 100) if e <= max_sb} | {max_sb}):
            for e_lb in sorted({e for e in (1, 2, 5, 10, 20, 50, 100) if e <= max_lb} | {max_lb}):
                if e_sb < 1 or e_lb < 1:
                    continue
                sb = stats([at(h, e_sb) for h in hist["sb"]])
                lb = stats([at(h, e_lb) for h in hist["lb"]])
                rules.append(
                    {"rule": f"SB {e_sb} ep / LB {e_lb} ep", "sb": sb, "lb": lb, "gap": gap(sb, lb)}
                )
        for patience in (1, 2, 3, 5):
            ends: dict[str, list[float | None]] = {}
            epochs: dict[str, list[int]] = {}
            for regime in REGIMES:
                ends[regime], epochs[regime] = [], []
                for h in hist[regime]:
                    s, stop_at = StopState(), len(h)
                    for row in h:
                        s.update(row["train_loss"], ctx.preset.min_improvement)
                        if s.bad_epochs >= patience:
                            stop_at = row["epoch"]
                            break
                    ends[regime].append(at(h, stop_at))
                    epochs[regime].append(stop_at)
            sb, lb = stats(ends["sb"]), stats(ends["lb"])
            rules.append(
                {
                    "rule": f"plateau, patience {patience}",
                    "sb": sb,
                    "lb": lb,
                    "gap": gap(sb, lb),
                    "epochs": epochs,
                }
            )
        out[net] = rules
    return out


def bn_test(ctx: Context) -> dict[str, Any]:
    """How BatchNorm at test time decides the gap: the same final weights, evaluated several ways.

    Table 2 evaluates with running statistics (PyTorch's eval mode). The authors' Keras-1
    code normalised with the statistics of each evaluation batch, whose size was the
    ``fit`` batch size during training (256 for SB, the LB batch for LB) and 5,000 in the
    parametric plots. Each row evaluates every trial's final weights on the whole test set:
    eval mode, batch statistics over fixed test chunks of the SB batch, 1,000 and the LB
    batch, and "as the authors' fit validated" (each regime with its own batch size).
    Chunks are consecutive test samples in the dataset's order.
    """
    out: dict[str, Any] = {}
    for net in ctx.preset.nets:
        runs = trial_runs(ctx, net)
        data = ctx.data(net)
        sizes = {r: regime_batch_size(r, data.num_train) for r in REGIMES}
        evals: list[tuple[str, dict[str, tuple[str, int]]]] = [
            ("running statistics (eval mode; Table 2)", {r: ("eval", 1000) for r in REGIMES}),
        ]
        for c in sorted({sizes["sb"], 1000, sizes["lb"]}):
            evals.append((f"batch statistics, test chunks of {c}", {r: ("batch", c) for r in REGIMES}))
        evals.append(
            (
                f"batch statistics, each regime's own batch (SB {sizes['sb']}, LB {sizes['lb']}; "
                "the authors' Keras fit)",
                {r: ("batch", sizes[r]) for r in REGIMES},
            )
        )
        rows = []
        for label, how in evals:
            row: dict[str, Any] = {"evaluation": label}
            for regime in REGIMES:
                bn, chunk = how[regime]
                accs, losses = [], []
                for run in done(runs[regime]):
                    m = _test_accuracy(ctx, run, bn, chunk)
                    accs.append(m.value)
                    losses.append(m.result["loss"])
                row[regime] = stats(accs)
                row[f"{regime}_loss"] = stats(losses)
                row[f"{regime}_how"] = {"bn_mode": bn, "chunk_size": chunk}
            row["gap"] = gap(row["sb"], row["lb"])
            rows.append(row)
        out[net] = rows
    return out


def _test_accuracy(ctx: Context, run: Run, bn: str, chunk: int) -> Record:
    """Test accuracy and loss of a run's final weights in a BN mode and chunking (cached)."""
    data = ctx.data(run.config.net)
    return ctx.measure(run, "accuracy", bn=bn, split="test", chunk_size=chunk, units=data.num_test / 10_000)


# -- Tables 3 and 4 ----------------------------------------------------------------------
def sharpness(ctx: Context) -> dict[str, Any]:
    """Keskar sharpness, full space and random subspace, every eps and BN mode (Tables 3, 4)."""
    p = ctx.preset
    out: dict[str, Any] = {}
    for net in p.nets:
        runs = trial_runs(ctx, net)
        rows = []
        for subspace in p.subspaces:
            for eps in p.eps:
                for bn in p.bn_modes:
                    row: dict[str, Any] = {"subspace": subspace, "eps": eps, "bn_mode": bn}
                    for regime in REGIMES:
                        vals, searches = [], []
                        for run in done(runs[regime]):
                            m = measure_sharpness(
                                ctx, run, run.model, ctx.weights(run), eps, subspace, bn,
                                run.config.seed,
                            )
                            vals.append(m.value)
                            searches.append(_search(run, m))
                        row[regime] = stats(vals)
                        row[regime]["runs"] = [r.id for r in done(runs[regime])]
                        row[regime]["search"] = searches
                    row["ratio"] = ratio(row["sb"], row["lb"])
                    rows.append(row)
        out[net] = rows
    return out


def _search(run: Run, m: Record) -> dict[str, Any]:
    """How one sharpness maximum was searched (the path, starts, spread, disagreement)."""
    r = m.result
    return {"run": run.id, "seed": run.config.seed, "search": r.get("search", "lbfgsb"),
            "num_starts": r.get("num_starts", 1), "spread": r.get("spread", 0.0),
            "disagree": bool(r.get("disagree", False)), "escalation": r.get("escalation", "")}


# -- Figures 3 and 7 ---------------------------------------------------------------------
def fig3(ctx: Context) -> dict[str, Any]:
    """Linear and curvilinear parametric plots between SB and LB minimizers (Figures 3, 7)."""
    p = ctx.preset
    out: dict[str, Any] = {}
    for net in p.nets:
        runs = trial_runs(ctx, net)
        sb, lb = done(runs["sb"]), done(runs["lb"])
        if not sb or not lb:
            continue
        out[net] = {}
        for path in ("linear", "curvilinear"):
            # alpha = 0 is the SB minimizer (the paper's x_s), alpha = 1 the LB one (x_l)
            m = ctx.measure(
                sb[0], "interpolation", bn="batch", samples=p.interp_samples, x=ctx.weights(sb[0]),
                units=interp_units(ctx), path=path, num_points=p.interp_points, endpoint=lb[0].id,
                inputs={"other": ctx.weights(lb[0]),
                        "test": ctx.objective(sb[0].model, net, None, "batch", split="test")},
            )
            out[net][path] = m.result
    return out


def interp_units(ctx: Context) -> float:
    """Work of one parametric plot."""
    p = ctx.preset
    data = ctx.data(p.nets[0])
    n = (p.interp_samples or data.num_train) + data.num_test
    return p.interp_points * n / 30_000


# -- distance and Hessian view -----------------------------------------------------------
def distance(ctx: Context) -> dict[str, Any]:
    """||x_SB - x0|| / ||x_LB - x0|| per trial (the paper: 3 to 10)."""
    out: dict[str, Any] = {}
    for net in ctx.preset.nets:
        runs = trial_runs(ctx, net)
        ratios, sb_d, lb_d = [], [], []
        for sb, lb in zip(runs["sb"], runs["lb"], strict=True):
            if sb.status != "done" or lb.status != "done":
                continue
            d_sb, d_lb = _distance_from_init(sb), _distance_from_init(lb)
            sb_d.append(d_sb)
            lb_d.append(d_lb)
            ratios.append(d_sb / d_lb)
        out[net] = {"ratio": stats(ratios), "sb": stats(sb_d), "lb": stats(lb_d)}
    return out


def _distance_from_init(run: Run) -> float:
    return float((flatten_params(run.model) - run.initial_vector()).norm())


def hessian(ctx: Context) -> dict[str, Any]:
    """Top Hessian eigenvalue and trace beside Keskar sharpness for the same minimizers."""
    p = ctx.preset
    bn = p.bn_modes[0]
    out: dict[str, Any] = {}
    for net in p.nets:
        runs = trial_runs(ctx, net)
        out[net] = {}
        for regime in REGIMES:
            finished = done(runs[regime])
            if not finished:
                continue
            run = finished[0]
            eig = ctx.measure(run, "hessian_eigenvalues", bn=bn, samples=p.hessian_samples, k=1,
                              units=40 * p.hessian_samples / 10_000)
            tr = ctx.measure(run, "hessian_trace", bn=bn, samples=p.hessian_samples,
                             num_probes=p.trace_probes,
                             units=2 * p.trace_probes * p.hessian_samples / 10_000)
            sharp = measure_sharpness(ctx, run, run.model, ctx.weights(run), p.eps[0], "full", bn, 0)
            out[net][regime] = {
                "run": run.id,
                "bn_mode": bn,
                "samples": p.hessian_samples,
                "top_eigenvalue": eig.value,
                "trace": tr.value,
                "trace_stderr": tr.result.get("stderr"),
                "trace_method": tr.result.get("method", "hutchinson"),
                "sharpness": sharp.value,
                "sharpness_eps": p.eps[0],
                "sharpness_samples": p.sharpness_samples,
                "eig_cost": eig.cost,
                "trace_cost": tr.cost,
                "sharpness_cost": sharp.cost,
            }
    return out


# -- Figures 4, 5 and 6 -------------------------------------------------------------------
def fig4(ctx: Context) -> dict[str, Any]:
    """Test accuracy and sharpness of the final iterate vs batch size (Figure 4)."""
    p = ctx.preset
    out: dict[str, Any] = {}
    bn = p.bn_modes[0]
    for net in p.nets:
        rows = []
        sizes = [b for b in p.batch_sizes if b <= ctx.data(net).num_train]
        ctx.prefetch([ctx.config(net, "sb", 0, batch_size=b, epochs=p.sweep_epochs) for b in sizes])
        for b in sizes:
            cfg = ctx.config(net, "sb", 0, batch_size=b, epochs=p.sweep_epochs)
            run = ctx.train(cfg, f"{net} batch {b}")
            row: dict[str, Any] = {
                "batch_size": b,
                "run": run.id,
                "status": run.status,
                "test_acc": run.final.get("test_acc"),
                "train_acc": run.final.get("train_acc"),
                "epochs": run.epochs,
            }
            if run.status == "done":
                m = measure_sharpness(ctx, run, run.model, ctx.weights(run), p.eps[0], "full", bn, 0)
                row["sharpness"] = m.value
            rows.append(row)
        out[net] = rows
    return out


def fig5(ctx: Context) -> dict[str, Any]:
    """Warm start: LB training from SB iterates after k SB epochs (Figure 5)."""
    p = ctx.preset
    bn = p.bn_modes[0]
    out: dict[str, Any] = {}
    for net in p.nets:
        sb_cfg = ctx.config(net, "sb", 0, epochs=p.warm_sb_epochs, stop="epochs", save_every_epoch=True)
        sb = ctx.train(sb_cfg, f"{net} SB for warm starts")
        rows = []
        points = [k for k in p.warm_points if k <= sb.epochs]
        ctx.prefetch([ctx.config(net, "lb", 0, epochs=p.warm_lb_epochs, init_from=f"{sb.id}@{k}")
                      for k in points])
        for k in points:
            cfg = ctx.config(net, "lb", 0, epochs=p.warm_lb_epochs, init_from=f"{sb.id}@{k}")
            run = ctx.train(cfg, f"{net} LB from SB epoch {k}")
            row: dict[str, Any] = {
                "sb_epochs": k,
                "run": run.id,
                "status": run.status,
                "test_acc": run.final.get("test_acc"),
                "train_acc": run.final.get("train_acc"),
            }
            if run.status == "done":
                m = measure_sharpness(ctx, run, run.model, ctx.weights(run), p.eps[0], "full", bn, 0)
                row["sharpness"] = m.value
            rows.append(row)
        out[net] = {"sb_run": sb.id, "rows": rows}
    return out


def fig6(ctx: Context) -> dict[str, Any]:
    """Sharpness vs training loss along training, SB vs LB, one trial (Figure 6)."""
    p = ctx.preset
    bn = p.bn_modes[0]
    out: dict[str, Any] = {}
    for net in p.nets:
        runs = trial_runs(ctx, net)
        out[net] = {}
        for regime in REGIMES:
            run = runs[regime][0]
            points = []
            for row in run.history:
                e = row["epoch"]
                if e % p.along_training and e != run.epochs:
                    continue
                model = ctx.model_at(run, e)
                m = measure_sharpness(ctx, run, model, ctx.weights(run, e), p.eps[0], "full", bn, 0,
                                      point=f"epoch={e}")
                points.append({"epoch": e, "train_loss": row["train_loss"], "sharpness": m.value})
            out[net][regime] = points
    return out


EXPERIMENTS: dict[str, Experiment] = {
    "table2": table2,
    "sharpness": sharpness,
    "fig2": fig2,
    "fig3": fig3,
    "distance": distance,
    "hessian": hessian,
    "stopping": stopping,
    "bn_test": bn_test,
    "fig4": fig4,
    "fig5": fig5,
    "fig6": fig6,
}
EXPERIMENTS.update(remedies.EXPERIMENTS)

#: Aliases accepted on the command line.
ALIASES = {"table3": "sharpness", "table4": "sharpness", "fig7": "fig3"}


def planned_units(ctx: Context, names: list[str]) -> float:
    """Estimate of the whole reproduction's work, for the progress bar's ETA."""
    p = ctx.preset
    total = 0.0
    for net in p.nets:
        n = ctx.data(net).num_train
        trials = p.trials * sum(train_units(ctx.config(net, r, 0), n) for r in REGIMES)
        total += trials
        if "sharpness" in names:
            total += 2 * p.trials * len(p.subspaces) * len(p.eps) * len(p.bn_modes) * sharpness_units(ctx)
        if "fig3" in names:
            total += 2 * interp_units(ctx)
        if "bn_test" in names:
            total += 2 * p.trials * 5 * ctx.data(net).num_test / 10_000
        if "hessian" in names:
            total += 2 * (40 * p.hessian_samples + 2 * p.trace_probes * p.hessian_samples) / 10_000
        if "fig4" in names:
            for b in p.batch_sizes:
                total += train_units(
                    ctx.config(net, "sb", 0, batch_size=min(b, n), epochs=p.sweep_epochs), n
                ) + sharpness_units(ctx)
        if "fig5" in names:
            total += train_units(ctx.config(net, "sb", 0, epochs=max(1, p.warm_sb_epochs)), n)
            total += len(p.warm_points) * (
                train_units(ctx.config(net, "lb", 0, epochs=p.warm_lb_epochs), n) + sharpness_units(ctx)
            )
        if "fig6" in names and p.along_training:
            total += 2 * (p.sb_epochs // p.along_training + 1) * sharpness_units(ctx)
    return total + remedies.planned_units(ctx, names)
