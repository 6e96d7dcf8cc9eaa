"""What the reproduction's experiments share: the trial runs, statistics, headline sharpness.

Both :mod:`sharpminima.reproduce.experiments` (the paper's tables and figures) and
:mod:`sharpminima.reproduce.remedies` (the remedies and methods) build on these, so neither
imports the other.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sharpminima import intervals
from sharpminima.landscape.registry import Record
from sharpminima.reproduce.context import Context
from sharpminima.train import Run

REGIMES = ("sb", "lb")


def stats(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample std, count and 95% t-interval of the finite values (all values kept)."""
    return intervals.summary(values)


def gap(sb: dict[str, Any], lb: dict[str, Any]) -> dict[str, Any]:
    """SB minus LB of two :func:`stats`, with Welch's 95% interval over trials."""
    return intervals.difference(sb["values"], lb["values"])


def ratio(sb: dict[str, Any], lb: dict[str, Any]) -> dict[str, Any]:
    """LB over SB of two :func:`stats`: ratio of geometric means, 95% interval (log scale)."""
    return intervals.ratio(sb["values"], lb["values"])


def done(runs: list[Run]) -> list[Run]:
    """The runs that finished."""
    return [r for r in runs if r.status == "done"]


def trial_runs(ctx: Context, net: str) -> dict[str, list[Run]]:
    """SB and LB runs of every trial of ``net`` (trained once, then from the store)."""
    cache = ctx.__dict__.setdefault("_trials", {})
    if net not in cache:
        p = ctx.preset
        keep = (p.along_training > 0 and "fig6" in p.experiments) or (
            p.dynamics_every > 0 and "dynamics" in p.experiments
        )
        ctx.prefetch([ctx.config(net, regime, 0, save_every_epoch=keep).replace(seed=seed)
                      for regime in REGIMES for seed in range(p.seed, p.seed + p.trials)])
        cache[net] = {
            regime: ctx.train_group(
                ctx.config(net, regime, 0, save_every_epoch=keep),
                list(range(p.seed, p.seed + p.trials)),
                f"{net} {regime.upper()}",
            )
            for regime in REGIMES
        }
    return cache[net]


def sharpness_params(ctx: Context, eps: float, subspace: str, seed: int) -> dict[str, Any]:
    """The preset's Keskar sharpness parameters for one eps and subspace."""
    p = ctx.preset
    params: dict[str, Any] = {"eps": eps, "subspace": subspace, "max_iters": p.max_iters}
    if subspace == "random":
        params.update(p=p.subspace_dim, seed=seed, distribution=p.subspace_distribution)
    return params


def measure_sharpness(
    ctx: Context,
    run: Run,
    model: nn.Module,
    x: Tensor,
    eps: float,
    subspace: str,
    bn: str,
    seed: int,
    point: str = "final",
) -> Record:
    """Keskar sharpness of ``x`` (weights of ``run``'s net), cached in the store."""
    return ctx.measure(
        run,
        "keskar_sharpness",
        bn=bn,
        samples=ctx.preset.sharpness_samples,
        point=point,
        model=model,
        x=x,
        units=sharpness_units(ctx),
        **sharpness_params(ctx, eps, subspace, seed),
    )


def sharpness_units(ctx: Context) -> float:
    """Work of one sharpness measurement (full training passes over 10,000 samples)."""
    samples = ctx.preset.sharpness_samples or ctx.data(ctx.preset.nets[0]).num_train
    return (ctx.preset.max_iters + 3) * samples / 10_000
