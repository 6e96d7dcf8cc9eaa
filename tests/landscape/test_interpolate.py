import copy
import json
import math

import pytest
import torch
from cases import DTYPE, assert_untouched, state_snapshot, tiny_data, tiny_mlp

from sharpminima.errors import ConfigError
from sharpminima.landscape.interpolate import (
    default_alphas,
    interpolate,
    path_coefficients,
    recompute_bn_statistics,
)
from sharpminima.landscape.objective import ModelObjective, flatten_params


def _f(z):
    return (z**2).sum() + torch.sin(z).sum()


XA = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)
XB = torch.tensor([-0.5, 3.0, 0.25], dtype=DTYPE)


# --- plain callables -----------------------------------------------------------------


def test_linear_path_values_and_exact_endpoints_on_a_grid_without_them():
    alphas = torch.linspace(-1, 2, 20, dtype=DTYPE)  # contains neither 0 nor 1
    res = interpolate(_f, XA, XB, alphas=alphas)
    assert res.settings["alphas_inserted"] == [0.0, 1.0]
    assert res.alphas.numel() == 22 and bool((res.alphas.diff() > 0).all())
    assert res.at(0.0)["train_loss"] == float(_f(XA))
    assert res.at(1.0)["train_loss"] == float(_f(XB))
    for a, v in zip(res.alphas.tolist(), res.train_loss.tolist(), strict=True):
        assert v == pytest.approx(float(_f((1 - a) * XA + a * XB)), rel=1e-14)
    assert res.train_acc is None and res.test_loss is None
    assert res.cost.num_loss == 22
    json.dumps(res.to_dict())


def test_default_grid_is_the_papers_and_contains_endpoints():
    grid = default_alphas()
    assert grid.numel() == 25 and float(grid[0]) == -1.0 and float(grid[-1]) == 2.0
    res = interpolate(_f, XA, XB, objective_test=lambda z: _f(z) + 1.0)
    assert res.settings["alphas_inserted"] == []
    assert res.alphas.numel() == 25
    assert torch.allclose(res.test_loss, res.train_loss + 1.0, rtol=1e-14, atol=0)


def test_grid_outside_unit_interval_inserts_nothing_and_barrier_is_nan():
    res = interpolate(_f, XA, XB, alphas=[1.5, 2.0])
    assert res.settings["alphas_inserted"] == [] and math.isnan(res.value)


def test_curvilinear_endpoints_are_exact():
    res = interpolate(_f, XA, XB, path="curvilinear", alphas=[-1.0, 0.0, 0.5, 1.0, 2.0])
    assert res.at(0.0)["train_loss"] == float(_f(XA))
    assert res.at(1.0)["train_loss"] == float(_f(XB))
    assert res.at(2.0)["train_loss"] == float(_f(-XA))
    assert res.at(-1.0)["train_loss"] == float(_f(-XB))
    c = math.cos(math.pi / 4)
    assert res.at(0.5)["train_loss"] == pytest.approx(float(_f(c * XA + c * XB)), rel=1e-14)
    assert path_coefficients(1.0, "curvilinear") == (0.0, 1.0)
    assert path_coefficients(3.0, "curvilinear") == (0.0, -1.0)


def test_barrier_of_convex_and_nonconvex_paths():
    e = torch.ones(3, dtype=DTYPE)
    convex = interpolate(lambda z: (z**2).sum(), -e, e, alphas=torch.linspace(0, 1, 5))
    assert convex.value == 0.0
    bump = interpolate(lambda z: 5.0 - (z**2).sum(), -e, e, alphas=torch.linspace(0, 1, 5))
    assert bump.value == pytest.approx(3.0)


# --- BatchNorm models -----------------------------------------------------------------


@pytest.fixture
def bn_pair():
    model_a = tiny_mlp(batch_norm=True, seed=0)
    model_b = tiny_mlp(batch_norm=True, seed=1)
    train_x, train_y = tiny_data(64, seed=1)
    test_x, test_y = tiny_data(40, seed=5)
    train = ModelObjective(model_a, train_x, train_y, bn_mode="eval", chunk_size=32)
    test = ModelObjective(model_a, test_x, test_y, bn_mode="eval", chunk_size=32)
    return model_a, model_b, train, test


def _eval_loss(model, obj, mode="eval"):
    ref = ModelObjective(model, obj.inputs, obj.targets, bn_mode=mode, chunk_size=obj.chunk_size)
    return ref.loss_and_accuracy(flatten_params(model))


@pytest.mark.parametrize("bn", ["batch", "interpolate", "recompute"])
def test_bn_modes_leave_callers_models_untouched(bn_pair, bn):
    model_a, model_b, train, test = bn_pair
    snap_a, snap_b = state_snapshot(model_a), state_snapshot(model_b)
    res = interpolate(train, flatten_params(model_a), flatten_params(model_b), bn=bn,
                      models=(model_a, model_b), objective_test=test, alphas=[0.0, 0.5, 1.0])
    assert_untouched(model_a, snap_a)
    assert_untouched(model_b, snap_b)
    assert res.bn == bn and res.settings["bn"] == bn
    assert res.test_loss is not None and res.test_acc is not None
    assert bool(torch.isfinite(res.train_loss).all())


@pytest.mark.parametrize("batched", [False, True])
def test_batch_mode_endpoints_are_each_models_batch_statistics_loss(bn_pair, batched):
    model_a, model_b, train, test = bn_pair
    res = interpolate(train, flatten_params(model_a), flatten_params(model_b), bn="batch",
                      objective_test=test, batched=batched)
    # one point at a time: the very same computation; batched (vmap): float64 rounding apart
    same = (lambda a, b: a == pytest.approx(b, rel=1e-12)) if batched else (lambda a, b: a == b)
    for alpha, model in ((0.0, model_a), (1.0, model_b)):
        at = res.at(alpha)
        assert same((at["train_loss"], at["train_acc"]), _eval_loss(model, train, "batch"))
        assert same((at["test_loss"], at["test_acc"]), _eval_loss(model, test, "batch"))
    assert res.settings["train"]["bn_mode"] == "batch"


def test_interpolated_buffers_give_each_models_own_eval_loss(bn_pair):
    model_a, model_b, train, test = bn_pair
    xa, xb = flatten_params(model_a), flatten_params(model_b)
    res = interpolate(train, xa, xb, bn="interpolate", models=(model_a, model_b.state_dict()),
                      objective_test=test)
    assert (res.at(0.0)["train_loss"], res.at(0.0)["train_acc"]) == _eval_loss(model_a, train)
    assert (res.at(1.0)["train_loss"], res.at(1.0)["train_acc"]) == _eval_loss(model_b, train)
    assert res.at(1.0)["test_loss"] == _eval_loss(model_b, test)[0]
    # midpoint: a copy with averaged weights and averaged buffers, in eval mode
    mid = copy.deepcopy(model_a)
    with torch.no_grad():
        sb = model_b.state_dict()
        for k, v in mid.state_dict().items():
            if v.is_floating_point():
                v.copy_(0.5 * v + 0.5 * sb[k])
    assert res.at(0.5)["train_loss"] == pytest.approx(_eval_loss(mid, train)[0], rel=1e-12)
    # and it is not what batch statistics give
    batch = interpolate(train, xa, xb, bn="batch")
    assert abs(batch.at(0.5)["train_loss"] - res.at(0.5)["train_loss"]) > 1e-3


def test_recomputed_statistics_match_a_manual_reestimate(bn_pair):
    model_a, model_b, train, _ = bn_pair
    xa, xb = flatten_params(model_a), flatten_params(model_b)
    res = interpolate(train, xa, xb, bn="recompute", alphas=[0.0, 0.5], bn_batch_size=16)
    for alpha in (0.0, 0.5):
        ref = copy.deepcopy(model_a)
        with torch.no_grad():
            for p, pa, pb in zip(ref.parameters(), model_a.parameters(), model_b.parameters(),
                                 strict=True):
                p.copy_((1 - alpha) * pa + alpha * pb)
            for m in ref.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.reset_running_stats()
                    m.momentum = None
            ref.train()
            for s in range(0, 64, 16):
                ref(train.inputs[s : s + 16])
        assert res.at(alpha)["train_loss"] == pytest.approx(_eval_loss(ref, train)[0], rel=1e-12)
    # re-estimated statistics differ from model A's stored ones
    assert abs(res.at(0.0)["train_loss"] - _eval_loss(model_a, train)[0]) > 1e-3
    assert res.settings["bn_batch_size"] == 16 and res.settings["bn_samples"] == 64
    assert res.cost.num_loss == 4  # two re-estimates and two evaluations


def test_recompute_with_one_full_batch_is_close_to_batch_statistics(bn_pair):
    model_a, model_b, train, _ = bn_pair
    one = ModelObjective(model_a, train.inputs, train.targets, bn_mode="eval", chunk_size=64)
    xa, xb = flatten_params(model_a), flatten_params(model_b)
    rec = interpolate(one, xa, xb, bn="recompute", alphas=[0.3])
    bat = interpolate(one, xa, xb, bn="batch", alphas=[0.3])
    # equal up to the unbiased (N/(N-1)) running variance
    assert rec.at(0.3)["train_loss"] == pytest.approx(bat.at(0.3)["train_loss"], rel=2e-2)


def test_extrapolated_running_variance_is_clipped(bn_pair):
    model_a, model_b, train, _ = bn_pair
    state_b = {k: (v * 0.1 if k.endswith("running_var") else v)
               for k, v in model_b.state_dict().items()}
    res = interpolate(train, flatten_params(model_a), flatten_params(model_b), bn="interpolate",
                      models=(model_a, state_b), alphas=[1.0, 2.0])
    assert res.num_clamped_var > 0
    assert bool(torch.isfinite(res.train_loss).all())


def test_recompute_helper_restores_flags_and_momentum(bn_pair):
    model_a, _, train, _ = bn_pair
    work = copy.deepcopy(model_a)
    work.train()
    moms = [m.momentum for m in work.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    recompute_bn_statistics(train, work, flatten_params(model_a), train.inputs, 32)
    assert work.training
    assert [m.momentum for m in work.modules() if isinstance(m, torch.nn.BatchNorm1d)] == moms


# --- every raise ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"path": "spline"}, "unknown path"),
        ({"bn": "ghost"}, "unknown BatchNorm handling"),
        ({"alphas": []}, "non-empty sequence of finite"),
        ({"alphas": [float("nan")]}, "non-empty sequence of finite"),
        ({"bn": "recompute"}, "needs network objectives"),
    ],
)
def test_interpolate_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        interpolate(_f, XA, XB, **kwargs)


def test_interpolate_raises_for_models_and_shapes(bn_pair):
    model_a, model_b, train, test = bn_pair
    xa, xb = flatten_params(model_a), flatten_params(model_b)
    with pytest.raises(ConfigError, match="differ in shape"):
        interpolate(_f, XA, torch.ones(4, dtype=DTYPE))
    with pytest.raises(ConfigError, match="needs models="):
        interpolate(train, xa, xb, bn="interpolate")
    with pytest.raises(ConfigError, match="lacks the buffers"):
        interpolate(train, xa, xb, bn="interpolate", models=(model_a, {}))
    with pytest.raises(ConfigError, match="same kind"):
        interpolate(train, xa, xb, objective_test=_f)
    with pytest.raises(ConfigError, match="must be positive"):
        interpolate(train, xa, xb, bn="recompute", bn_batch_size=0)
    res = interpolate(_f, XA, XB, alphas=[0.0, 1.0])
    with pytest.raises(ConfigError, match="not on the grid"):
        res.at(0.5)
    with pytest.raises(ConfigError, match="unknown path"):
        path_coefficients(0.5, "zigzag")  # type: ignore[arg-type]


def test_alpha_grid_gives_exactly_the_points_asked_for():
    from sharpminima.landscape.interpolate import alpha_grid

    assert alpha_grid(-1.0, 2.0, 5) == [-1.0, 0.0, 0.5, 1.0, 2.0]
    assert alpha_grid(-1.0, 2.0, 25) == [-1.0 + 0.125 * k for k in range(25)]  # the paper's grid
    assert alpha_grid(0.0, 1.0, 2) == [0.0, 1.0] and len(alpha_grid(-0.5, 1.5, 11)) == 11
    with pytest.raises(ConfigError, match="need at least 4 points"):
        alpha_grid(-1.0, 2.0, 3)
    with pytest.raises(ConfigError, match="need alpha_max > alpha_min"):
        alpha_grid(1.0, 1.0, 5)
