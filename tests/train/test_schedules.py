import math

import pytest
import torch

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.train import batch_indices, train
from sharpminima.train.schedules import (
    BatchPlan,
    EpochContext,
    make_schedule,
    set_lr,
    steps_done,
)
from sm_testing import make_tiny, small_mlp

CFG = TrainConfig(net="small", dataset="tiny", batch_size=50, epochs=6)
N = 600


def _sizes(config, epochs=None, num_train=N):
    schedule = make_schedule(config, num_train)
    ctx = EpochContext(small_mlp(), make_tiny(), [])
    return [schedule.plan(e, ctx).batch_size for e in range(1, (epochs or config.epochs) + 1)]


def _cfg(name, **args):
    return CFG.replace(batch_schedule=name, batch_schedule_args=tuple(args.items()))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (CFG, [50] * 6),
        (_cfg("step", factor=2, every=2), [50, 50, 100, 100, 200, 200]),
        (_cfg("step", factor=3, every=1, max_batch=400), [50, 150, 400, 400, 400, 400]),
        (_cfg("step", factor=2, every=1), [50, 100, 200, 400, 600, 600]),  # capped at N
        (_cfg("linear", final=300), [50, 100, 150, 200, 250, 300]),
        (_cfg("linear", final=300, over=3), [50, 175, 300, 300, 300, 300]),
        (_cfg("exponential", rate=1.5, max_batch=200), [50, 75, 112, 169, 200, 200]),
        (_cfg("increase", milestones=(2, 4), factor=5), [50, 50, 250, 250, 250, 250]),
        (_cfg("increase", milestones=[1, 2, 4], factor=2), [50, 100, 200, 200, 400, 400]),
    ],
)
def test_batch_schedule_sizes(config, expected):
    assert _sizes(config) == expected


def test_increase_batch_decays_lr_once_the_batch_is_capped():
    # Smith et al.: batch x5 at each milestone while it fits in 300, then lr / 5
    config = _cfg("increase", milestones=(1, 2, 3), factor=5, max_batch=300)
    schedule = make_schedule(config, N)
    ctx = EpochContext(small_mlp(), make_tiny(), [])
    plans = [schedule.plan(e, ctx) for e in range(1, 5)]
    assert [p.batch_size for p in plans] == [50, 250, 250, 250]
    assert [p.lr_factor for p in plans] == [1.0, 1.0, 0.2, 0.04]
    assert schedule.lr(0, 4, plans[3]) == pytest.approx(CFG.lr * 0.04)


@pytest.mark.parametrize("batch_size", [1, 7, 50, 256, 600])
def test_each_epoch_covers_the_data_once_with_promised_sizes(batch_size):
    batches = batch_indices(N, batch_size, seed=3, epoch=2, device=torch.device("cpu"))
    sizes = [len(b) for b in batches]
    assert sizes == [batch_size] * (N // batch_size) + ([N % batch_size] if N % batch_size else [])
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(N))


def test_lr_rules():
    def lr(name, step=0, epoch=1, batch=512, **args):
        config = CFG.replace(lr_schedule=name, lr_schedule_args=tuple(args.items()))
        return make_schedule(config, N).lr(step, epoch, BatchPlan(batch))

    assert lr("constant") == CFG.lr
    assert lr("linear") == pytest.approx(CFG.lr * 2)
    assert lr("sqrt") == pytest.approx(CFG.lr * math.sqrt(2))
    assert lr("linear", base_batch=128, batch=512) == pytest.approx(CFG.lr * 4)
    # linear warm-up over 10 steps: (t + 1) / 10 of the target, then the target
    assert [lr("linear", step=t, warmup_steps=10) / (2 * CFG.lr) for t in (0, 4, 9, 50)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0]
    )
    # step decay after each milestone epoch
    assert [lr("step", epoch=e, milestones=(2, 4), gamma=0.5) for e in (1, 2, 3, 4, 5)] == pytest.approx(
        [CFG.lr, CFG.lr, CFG.lr / 2, CFG.lr / 2, CFG.lr / 4]
    )


def test_set_lr_keeps_group_proportions():
    w, v = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [w]}, {"params": [v], "lr": 0.5}], lr=0.1)
    set_lr(opt, 0.01, 0.1)
    assert opt.param_groups[0]["lr"] == 0.01
    assert opt.param_groups[1]["lr"] == pytest.approx(0.05)


def test_steps_done():
    assert steps_done([], N, 50) == 0
    assert steps_done([{"steps": 17}], N, 50) == 17
    assert steps_done([{"epoch": 1}, {"epoch": 2}], N, 50) == 24  # rows from before steps were kept


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (CFG.replace(batch_schedule="huge"), "unknown batch schedule 'huge'; choose one of adaptive"),
        (CFG.replace(lr_schedule="cosine"), "unknown lr schedule 'cosine'; choose one of constant"),
        (_cfg("step", factr=2), r"unknown option\(s\) \['factr'\] for batch schedule 'step'"),
        (_cfg("linear"), r"batch schedule 'linear' needs option\(s\) \['final'\]"),
        (_cfg("step", factor=1), "option 'factor' must be a number > 1, got 1"),
        (_cfg("step", every=1.5), "option 'every' must be an integer > 0, got 1.5"),
        (_cfg("exponential", rate=-1.0), "option 'rate' must be a number > 0"),
        (_cfg("step", max_batch=0), "option 'max_batch' must be an integer > 0"),
        (_cfg("increase", milestones=3), "option 'milestones' must be a list of epochs, got 3"),
        (_cfg("increase", milestones=(0,)), "option 'milestones' must be an integer > 0"),
        (_cfg("adaptive", monotone="yes"), "option 'monotone' must be true or false"),
        (_cfg("adaptive", min_batch=500, max_batch=100), "min_batch 500 exceeds the cap 100"),
        (CFG.replace(lr_schedule="step"), "lr schedule 'step' needs option 'milestones'"),
        (CFG.replace(lr_schedule_args=(("warmup_steps", -1),)), "'warmup_steps' must be an integer >= 0"),
        (CFG.replace(lr_schedule_args=(("gamma", 0),)), "option 'gamma' must be a number > 0"),
    ],
)
def test_schedule_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        make_schedule(config, N)


def test_bad_options_fail_before_training(tiny, tmp_path):
    from sharpminima.store import Store

    store = Store(tmp_path)
    with pytest.raises(ConfigError, match="unknown batch schedule"):
        train(CFG.replace(batch_schedule="huge"), dataset=tiny, store=store, model_factory=small_mlp)
    with pytest.raises(ConfigError, match="unknown init scheme 'he'"):
        train(CFG.replace(init="he"), dataset=tiny, store=store, model_factory=small_mlp)
    with pytest.raises(ConfigError, match="unknown option"):
        train(CFG.replace(method="sam", method_args=(("rhoo", 0.1),)), dataset=tiny, store=store,
              model_factory=small_mlp)
    with pytest.raises(ConfigError, match="unknown option"):
        train(CFG.replace(optimizer="lars", optimizer_args=(("trust", 1.0),)), dataset=tiny, store=store,
              model_factory=small_mlp)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'"):
        train(CFG.replace(optimizer="adamx"), dataset=tiny, store=store, model_factory=small_mlp)
    assert store.list_runs() == []


def test_ghost_batchnorm_is_refused_under_torchrun(tiny, monkeypatch):
    import torch

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    sam_ghost = CFG.replace(method="sam", method_args=(("ghost_batch_size", 8),))
    for cfg in (CFG.replace(method="ghost_bn"), sam_ghost):
        with pytest.raises(ConfigError, match="ghost BatchNorm .* not supported under torchrun"):
            train(cfg, dataset=tiny, model_factory=small_mlp)


def test_training_restores_process_wide_matmul_precision(tiny):
    import torch

    from sharpminima.train.perf import cuda_flags_restored

    before = torch.get_float32_matmul_precision()
    with cuda_flags_restored():
        torch.set_float32_matmul_precision("medium" if before != "medium" else "high")
    assert torch.get_float32_matmul_precision() == before
    train(CFG, dataset=tiny, model_factory=small_mlp)
    assert torch.get_float32_matmul_precision() == before


# ---------------------------------------------------------------- config fields


def test_new_fields_keep_old_hashes_and_round_trip():
    assert (
        TrainConfig(net="f1").hash()
        == TrainConfig(net="f1", batch_schedule="constant", init="default").hash()
    )
    c = CFG.replace(
        batch_schedule="increase",
        batch_schedule_args=(("milestones", [3, 1]), ("factor", 2)),
        lr_schedule="sqrt",
        lr_schedule_args=(("warmup_steps", 5),),
        augment="paper",
        augment_args=(("rotate", 5.0),),
        init="orthogonal",
        init_scale=0.5,
    )
    assert c.batch_schedule_args == (("factor", 2), ("milestones", (3, 1)))  # sorted, lists frozen
    again = TrainConfig.from_dict(c.to_dict())
    assert again == c and again.hash() == c.hash()
    assert c.hash() != CFG.hash()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"init_scale": 0.0}, "init_scale must be a positive number, got 0.0"),
        ({"init_scale": math.inf}, "init_scale must be a positive number, got inf"),
        ({"batch_schedule_args": (("factor",),)}, r"batch_schedule_args must hold \(name, value\) pairs"),
        ({"augment_args": ((1, 2),)}, r"augment_args must hold \(name, value\) pairs, got \(1, 2\)"),
        ({"lr_schedule_args": (("gamma", 1), ("gamma", 2))}, "lr_schedule_args names an option twice"),
    ],
)
def test_config_option_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        CFG.replace(**changes)


# ---------------------------------------------------------------- in the loop


def test_loop_follows_schedules_and_records_them(tiny):
    config = _cfg("step", factor=2, every=2).replace(
        lr_schedule="linear", lr_schedule_args=(("base_batch", 50), ("warmup_steps", 100)), epochs=4
    )
    run = train(config, dataset=tiny, model_factory=small_mlp)
    assert [h["batch_size"] for h in run.history] == [50, 50, 100, 100]
    assert [h["steps"] for h in run.history] == [12, 24, 30, 36]
    assert [h["batch_size_mean"] for h in run.history] == [50.0, 50.0, 100.0, 100.0]
    # last step (t = 35) of epoch 4: linear scaling x2, warm-up 36/100
    assert run.history[-1]["lr_end"] == pytest.approx(CFG.lr * 2 * 36 / 100)
    plain = train(CFG.replace(epochs=1), dataset=tiny, model_factory=small_mlp)
    assert plain.history[0]["lr_end"] == CFG.lr and plain.history[0]["steps"] == 12


def test_adaptive_batch_follows_the_noise_scale(tiny, monkeypatch):
    import sharpminima.train.schedules as schedules

    measured = iter([80.0, 30.0, math.nan, 1e9])
    monkeypatch.setattr(schedules, "measure_noise_scale", lambda *a: next(measured))
    config = _cfg("adaptive", scale=2.0, max_batch=400).replace(epochs=4)
    run = train(config, dataset=tiny, model_factory=small_mlp)
    # 2 x 80 = 160; 2 x 30 = 60 < previous (monotone); NaN -> cap; 2e9 -> cap
    assert [h["batch_size"] for h in run.history] == [160, 160, 400, 400]
    assert run.history[0]["noise_scale"] == 80.0


def test_adaptive_measures_real_noise_scale(tiny):
    config = _cfg(
        "adaptive", every=2, batch_small=8, batch_big=64, repeats=3, monotone=False, min_batch=10
    ).replace(epochs=3)
    schedule = make_schedule(config, N)
    model = small_mlp()
    before = [t.clone() for t in model.state_dict().values()]
    plan = schedule.plan(1, EpochContext(model, tiny, []))
    assert 10 <= plan.batch_size <= N and math.isfinite(plan.metrics["noise_scale"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))
    again = schedule.plan(1, EpochContext(model, tiny, []))
    assert again == plan  # seeded by (seed, epoch)
    history = [{"batch_size": plan.batch_size}]
    assert schedule.plan(2, EpochContext(model, tiny, history)).batch_size == plan.batch_size  # every=2
