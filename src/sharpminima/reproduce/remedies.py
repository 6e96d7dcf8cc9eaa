"""Remedies and large-batch methods as experiments: what closes the gap, and at what cost.

Each remedy is a named change to the LB (and, where the comparison needs it, the SB)
configuration of a reproduction: a step method, an optimizer, a batch or learning-rate
schedule, augmentation, an initialization, a warm start. The training loop knows none of
them by name; they are config fields read by registries (see :mod:`sharpminima.train`).

Experiments (all through the run store, so nothing finished is redone):

* ``remedies``: SB, LB and LB + each remedy side by side: test accuracy, its gap to SB,
  the headline Keskar sharpness, epochs and wall time ("what closes the gap").
* ``conservative_sweep``: conservative (proximal) training over decades of ``lambda`` and
  inner-iteration counts (a reviewer asked why the paper's ``lambda = 1e-3``).
* ``init_study``: SB vs LB across initialization schemes and scales.
* ``dynamics``: along training, for SB and LB, the gradient noise scale, the Hessian's top
  eigenvalue (beside the ``2 (1 + beta) / lr`` stability line of heavy-ball SGD for SGD
  runs) and Keskar sharpness, every ``dynamics_every`` epochs on a stated subset.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sharpminima.config import SB_BATCH_SIZE
from sharpminima.errors import ConfigError
from sharpminima.reproduce.common import done, measure_sharpness, sharpness_units, stats, trial_runs
from sharpminima.reproduce.context import Context, train_units
from sharpminima.train import Run
from sharpminima.train.remedy_steps import CONSERVATIVE_ARGS

log = logging.getLogger(__name__)

Changes = Callable[[Context, str, int], dict[str, Any]]


@dataclass(frozen=True)
class Remedy:
    """One method applied on top of the LB configuration.

    Attributes:
        name: Key used in presets and on the command line.
        label: What the report calls it.
        changes: ``(ctx, net, seed) -> config changes`` applied to the LB config (and to
            the SB config when ``sb_too``).
        sb_too: Also run SB with the same changes (e.g. augmentation or another optimizer,
            where the paper compares SB and LB under the same method).
        image_only: Only meaningful for image data (skipped with a note otherwise).
        paper: What the paper reports for it, if anything.
    """

    name: str
    label: str
    changes: Changes
    sb_too: bool = False
    image_only: bool = False
    paper: str = ""


def _fixed(**changes: Any) -> Changes:
    return lambda ctx, net, seed: dict(changes)


def _lb_batch(ctx: Context, net: str) -> int:
    return ctx.config(net, "lb", 0).batch_size


def _warm_start(ctx: Context, net: str, seed: int) -> dict[str, Any]:
    """LB from the SB iterate after ``warm_epochs`` SB epochs (the paper's piggybacking)."""
    k = ctx.preset.warm_epochs
    sb = ctx.train(
        ctx.config(net, "sb", seed, epochs=k, stop="epochs"), f"{net} SB {k} epochs for warm start"
    )
    return {"init_from": sb.id}


def _augment(ctx: Context, net: str, seed: int) -> dict[str, Any]:
    """The paper's augmentation; no horizontal flips for MNIST (a flipped digit is no digit)."""
    if ctx.dataset_name(net) == "mnist":
        return {"augment": "paper", "augment_args": (("flip", 0.0),)}
    return {"augment": "paper"}


def _grow_batch(kind: str) -> Changes:
    """Batch schedules from the SB size (256) up to the LB size over the LB epoch budget."""

    def changes(ctx: Context, net: str, seed: int) -> dict[str, Any]:
        lb = _lb_batch(ctx, net)
        start = min(SB_BATCH_SIZE, lb)  # tiny data sets: LB may be below 256
        epochs = max(2, ctx.preset.lb_epochs)
        growth = lb / start
        if kind == "step":  # x2 every few epochs, reaching LB by the last fifth
            every = max(1, math.floor(0.8 * epochs / max(1.0, math.log2(growth))))
            args: dict[str, Any] = {"factor": 2.0, "every": every, "max_batch": lb}
        elif kind == "linear":
            args = {"final": lb, "over": max(1, epochs - 1)}
        elif kind == "exponential":
            args = {"rate": max(1.0, growth) ** (1.0 / max(1, epochs - 1)), "max_batch": lb}
        elif kind == "increase":  # where lr would decay (at 1/2 and 3/4), grow B instead
            milestones = tuple(sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)}))
            # Two equal factors that end exactly at LB (Smith et al. use 5 with their sizes).
            factor = max(1.0 + 1e-9, growth ** (1.0 / len(milestones)))
            args = {"milestones": milestones, "factor": factor, "max_batch": lb}
        else:  # adaptive: B = clip(B_simple, 256, LB), measured every epoch
            args = {"min_batch": start, "max_batch": lb}
        return {
            "batch_size": start,
            "batch_schedule": kind,
            "batch_schedule_args": tuple(sorted(args.items())),
        }

    return changes


def _lr_scaled(rule: str) -> Changes:
    """LB with the lr scaled from the SB lr by B/256 (``linear``) or its root, with warm-up."""

    def changes(ctx: Context, net: str, seed: int) -> dict[str, Any]:
        epochs = ctx.preset.lb_epochs
        steps = math.ceil(ctx.data(net).num_train / _lb_batch(ctx, net))
        warmup = max(1, steps * max(1, epochs // 5))  # the first fifth of training
        args = {"base_batch": SB_BATCH_SIZE, "warmup_steps": warmup}
        return {"lr_schedule": rule, "lr_schedule_args": tuple(sorted(args.items()))}

    return changes


REMEDIES: dict[str, Remedy] = {
    r.name: r
    for r in (
        Remedy(
            "augment",
            "data augmentation (rotations <= 10 deg, shifts <= 0.2; flips except on digits)",
            _augment,
            sb_too=True,
            image_only=True,
            paper="LB test accuracy matches SB-with-augmentation (C2 89.82 SB vs 90.26 LB); "
            "LB minima stay sharp",
        ),
        Remedy(
            "conservative",
            "conservative training (lambda 1e-3, 3 inner Adam steps)",
            _fixed(method="conservative"),
            paper="helps a little (F2 61.94 vs 64.02 SB); minima stay sharp",
        ),
        Remedy(
            "adversarial",
            "adversarial training (FGSM)",
            _fixed(method="adversarial"),
            paper="no gain",
        ),
        Remedy("grad-noise", "Gaussian noise on gradients", _fixed(method="grad_noise"), paper="no gain"),
        Remedy(
            "iterate-noise", "Gaussian noise on iterates", _fixed(method="iterate_noise"), paper="no gain"
        ),
        Remedy(
            "warm-start",
            "warm start from SB after a few epochs (piggybacking)",
            _warm_start,
            paper="after enough SB epochs the LB result is flat and generalizes (Fig. 5)",
        ),
        Remedy("ghost-bn", "ghost BatchNorm (virtual batches of 256)", _fixed(method="ghost_bn")),
        Remedy("sam", "SAM (rho 0.05)", _fixed(method="sam"), sb_too=True),
        Remedy("asam", "adaptive SAM", _fixed(method="asam"), sb_too=True),
        Remedy("lr-sqrt", "square-root lr scaling with warm-up", _lr_scaled("sqrt")),
        Remedy("lr-linear", "linear lr scaling with warm-up", _lr_scaled("linear")),
        Remedy("batch-step", "batch grows x2 in steps (256 -> LB)", _grow_batch("step")),
        Remedy("batch-linear", "batch grows linearly (256 -> LB)", _grow_batch("linear")),
        Remedy("batch-exp", "batch grows exponentially (256 -> LB)", _grow_batch("exponential")),
        Remedy("batch-increase", "increase the batch instead of decaying the lr (at 1/2 and 3/4 of training)",
               _grow_batch("increase")),
        Remedy("batch-adaptive", "batch set from the gradient noise scale", _grow_batch("adaptive")),
        Remedy("lars", "LARS (lr 1, trust coefficient 1e-3, momentum 0.9)",
               _fixed(optimizer="lars", lr=1.0), sb_too=True),
        Remedy("lamb", "LAMB (lr 1e-3, eps 1e-6)", _fixed(optimizer="lamb", adam_eps=1e-6), sb_too=True),
        Remedy("sgd-momentum", "SGD with momentum 0.9 (lr 0.05)", _fixed(optimizer="sgd", lr=0.05),
               sb_too=True, paper="other LB optimizers behaved alike"),
        Remedy("adagrad", "Adagrad (lr 0.01)", _fixed(optimizer="adagrad", lr=0.01), sb_too=True,
               paper="other LB optimizers behaved alike"),
        Remedy("adamw", "AdamW (weight decay 0.01)", _fixed(optimizer="adamw", weight_decay=0.01),
               sb_too=True),
    )
}


def get_remedy(name: str) -> Remedy:
    """Return a remedy by name.

    Raises:
        ConfigError: For an unknown name.
    """
    try:
        return REMEDIES[name]
    except KeyError:
        raise ConfigError(f"unknown remedy {name!r}; choose from {', '.join(REMEDIES)}") from None


def _is_image(ctx: Context, net: str) -> bool:
    return len(ctx.data(net).input_shape) == 3


def _headline(ctx: Context, run: Run) -> float | None:
    if run.status != "done":
        return None
    p = ctx.preset
    return measure_sharpness(ctx, run, run.model, ctx.weights(run), p.eps[0], "full", p.bn_modes[0], 0).value


def _summarise(ctx: Context, runs: list[Run]) -> dict[str, Any]:
    finished = done(runs)
    return {
        "test_acc": stats([r.final.get("test_acc") for r in finished]),
        "train_acc": stats([r.final.get("train_acc") for r in finished]),
        "train_loss": stats([r.final.get("train_loss") for r in finished]),
        "sharpness": stats([_headline(ctx, r) for r in finished]),
        "epochs": [r.epochs for r in runs],
        "seconds": stats([r.seconds for r in finished]),
        "runs": [r.id for r in runs],
        "not_done": [
            {"run": r.id, "status": r.status, "message": r.message} for r in runs if r.status != "done"
        ],
    }


def _trials(ctx: Context) -> int:
    return ctx.preset.remedy_trials or ctx.preset.trials


def remedies(ctx: Context) -> dict[str, Any]:
    """SB, LB and LB + each remedy: test accuracy, gap to SB, sharpness, epochs, seconds."""
    p = ctx.preset
    out: dict[str, Any] = {}
    for net in p.nets:
        base = trial_runs(ctx, net)
        rows: list[dict[str, Any]] = [
            {"name": "sb", "label": "SB (baseline)", "regime": "sb", **_summarise(ctx, base["sb"])},
            {"name": "lb", "label": "LB (baseline)", "regime": "lb", **_summarise(ctx, base["lb"])},
        ]
        for name in p.remedies:
            remedy = get_remedy(name)
            if remedy.image_only and not _is_image(ctx, net):
                rows.append(
                    {"name": name, "label": remedy.label, "regime": "lb", "skipped": "image data only"}
                )
                continue
            regimes = ("lb", "sb") if remedy.sb_too else ("lb",)
            for regime in regimes:
                runs = []
                first = ctx.preset.seed
                seeds = range(first, first + _trials(ctx))
                configs = [ctx.config(net, regime, seed, **remedy.changes(ctx, net, seed)) for seed in seeds]
                ctx.prefetch(configs)
                for seed, cfg in zip(seeds, configs, strict=True):
                    runs.append(
                        ctx.train(cfg, f"{net} {regime.upper()} + {name} trial {seed - first + 1}")
                    )
                rows.append(
                    {
                        "name": name,
                        "label": remedy.label,
                        "regime": regime,
                        "paper": remedy.paper,
                        "changes": {k: v for k, v in remedy.changes(ctx, net, 0).items() if k != "init_from"},
                        **_summarise(ctx, runs),
                    }
                )
        out[net] = rows
    return out


def conservative_sweep(ctx: Context) -> dict[str, Any]:
    """LB with conservative training over ``lambda`` and inner iterations (one trial each)."""
    p = ctx.preset
    out: dict[str, Any] = {}
    for net in p.nets:
        base = trial_runs(ctx, net)
        rows = []
        # The grid, plus the paper's cell (reused from the remedies table when it ran).
        paper_cell = (CONSERVATIVE_ARGS["lam"], CONSERVATIVE_ARGS["inner_iters"])
        grid = {(lam, inner) for lam in p.lambda_sweep for inner in p.inner_iters_sweep}
        for lam, inner in sorted(grid | {paper_cell}):
            # Only non-default options, so the paper's (1e-3, 3) is the remedies run itself.
            given = {"inner_iters": int(inner), "lam": float(lam)}
            args = tuple((k, v) for k, v in sorted(given.items()) if CONSERVATIVE_ARGS[k] != v)
            cfg = ctx.config(net, "lb", 0, method="conservative", method_args=args)
            run = ctx.train(cfg, f"{net} LB conservative lambda {lam:g} x{inner}")
            rows.append({"lambda": lam, "inner_iters": inner, **_summarise(ctx, [run])})
        # The baselines are the remedies table's own runs (every trial), so one report never
        # shows two baselines for one setting.
        out[net] = {
            "rows": rows,
            "sb": _summarise(ctx, base["sb"]),
            "lb": _summarise(ctx, base["lb"]),
        }
    return out


def init_study(ctx: Context) -> dict[str, Any]:
    """SB and LB from each initialization scheme and scale (one trial each)."""
    p = ctx.preset
    out: dict[str, Any] = {}
    for net in p.nets:
        rows = []
        for scheme, scale in p.inits:
            row: dict[str, Any] = {"init": scheme, "scale": scale}
            for regime in ("sb", "lb"):
                if (scheme, float(scale)) == ("default", 1.0):  # the baseline: all its trials
                    runs = trial_runs(ctx, net)[regime]
                else:
                    cfg = ctx.config(net, regime, 0, init=scheme, init_scale=float(scale))
                    runs = [ctx.train(cfg, f"{net} {regime.upper()} init {scheme} x{scale:g}")]
                row[regime] = _summarise(ctx, runs)
            sb, lb = row["sb"]["test_acc"]["mean"], row["lb"]["test_acc"]["mean"]
            row["gap"] = sb - lb if sb is not None and lb is not None else None
            rows.append(row)
        out[net] = rows
    return out


def _stability_line(run: Run) -> float | None:
    """``2 (1 + momentum) / lr`` for SGD runs (heavy-ball stability edge), else None."""
    c = run.config
    if c.optimizer != "sgd":
        return None
    return 2.0 * (1.0 + c.momentum) / c.lr


def dynamics(ctx: Context) -> dict[str, Any]:
    """Noise scale, top Hessian eigenvalue and sharpness along SB and LB training."""
    p = ctx.preset
    bn = p.bn_modes[0]
    out: dict[str, Any] = {}
    if p.dynamics_every < 1:
        return out
    for net in p.nets:
        out[net] = {}
        for optimizer, lr in p.dynamics_optimizers:
            for regime in ("sb", "lb"):
                cfg = ctx.config(net, regime, 0, optimizer=optimizer, lr=float(lr), save_every_epoch=True)
                run = ctx.train(cfg, f"{net} {regime.upper()} {optimizer} for dynamics")
                points = []
                last = run.epochs if run.status == "done" else run.epochs - 1  # no weights saved
                for row in run.history[:last]:
                    e = row["epoch"]
                    if e % p.dynamics_every and e != 1 and e != last:
                        continue
                    model = ctx.model_at(run, e)
                    x = ctx.weights(run, e)
                    at = {"point": f"epoch={e}", "model": model, "x": x}
                    top = ctx.measure(run, "hessian_eigenvalues", bn=bn, samples=p.dynamics_samples, k=1,
                                      **at)
                    # per-example gradients need running BN statistics (the measure fixes eval)
                    gns = ctx.measure(run, "gradient_noise_scale", bn="eval", samples=p.dynamics_samples,
                                      num_examples=p.noise_examples, **at)
                    sharp = measure_sharpness(ctx, run, model, x, p.eps[0], "full", bn, 0, point=f"epoch={e}")
                    points.append(
                        {
                            "epoch": e,
                            "train_loss": row["train_loss"],
                            "test_acc": row["test_acc"],
                            "top_eigenvalue": top.value,
                            "noise_scale": gns.value,
                            "sharpness": sharp.value,
                        }
                    )
                out[net][f"{optimizer}/{regime}"] = {
                    "run": run.id,
                    "optimizer": optimizer,
                    "lr": lr,
                    "regime": regime,
                    "batch_size": cfg.batch_size,
                    "status": run.status,
                    "stability_line": _stability_line(run),
                    "points": points,
                }
    return out


EXPERIMENTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "remedies": remedies,
    "conservative_sweep": conservative_sweep,
    "init_study": init_study,
    "dynamics": dynamics,
}


def planned_units(ctx: Context, names: list[str]) -> float:
    """Estimate of these experiments' work (for the reproduction's progress bar)."""
    p = ctx.preset
    total = 0.0
    for net in p.nets:
        n = ctx.data(net).num_train
        lb = train_units(ctx.config(net, "lb", 0), n) + sharpness_units(ctx)
        sb = train_units(ctx.config(net, "sb", 0), n) + sharpness_units(ctx)
        if "remedies" in names:
            for name in p.remedies:
                remedy = REMEDIES.get(name)
                if remedy is None:
                    continue
                total += _trials(ctx) * (lb + (sb if remedy.sb_too else 0.0))
        if "conservative_sweep" in names:
            total += len(p.lambda_sweep) * len(p.inner_iters_sweep) * lb
        if "init_study" in names:
            total += len(p.inits) * (sb + lb)
        if "dynamics" in names and p.dynamics_every:
            samples = p.dynamics_samples or n
            points = max(p.sb_epochs, p.lb_epochs) // p.dynamics_every + 2
            per_point = 40 * samples / 10_000 + sharpness_units(ctx)
            total += len(p.dynamics_optimizers) * (sb + lb + 2 * points * per_point)
    return total
