"""Batched landscape evaluation against the one-at-a-time reference path.

Tolerances: float64 toy nets within 1e-12 relative (vmap's batched products round apart
from single ones); float32 F1-shaped nets within 1e-5; accuracies equal.
"""

import logging

import pytest
import torch
from cases import assert_untouched, state_snapshot, tiny_data, tiny_mlp
from torch import nn

import sharpminima.landscape.batched as batched_mod
from sharpminima.errors import ConfigError
from sharpminima.landscape import ModelObjective, flatten_params
from sharpminima.landscape.batched import default_batched, evaluate_points
from sharpminima.landscape.flatness import average_sharpness
from sharpminima.landscape.interpolate import interpolate
from sharpminima.landscape.objective import FunctionObjective
from sharpminima.landscape.surface import loss_surface_2d, random_direction


def _points(x0, num=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [x0 + 0.3 * torch.randn(x0.shape, generator=g, dtype=x0.dtype) for _ in range(num)]


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
@pytest.mark.parametrize("group_size", [1, 3, None])
def test_batched_equals_one_at_a_time_float64(bn_mode, group_size):
    model = tiny_mlp(batch_norm=True)
    x, y = tiny_data(70)
    obj = ModelObjective(model, x, y, bn_mode=bn_mode, chunk_size=32)  # chunks 32, 32, 6
    snap = state_snapshot(model)
    pts = _points(flatten_params(model))
    ref_loss, ref_acc = evaluate_points(obj, pts, batched=False)
    loss, acc = evaluate_points(obj, iter(pts), batched=True, group_size=group_size)
    assert loss == pytest.approx(ref_loss, rel=1e-12) and acc == ref_acc
    assert ref_loss == [obj.loss_and_accuracy(p)[0] for p in pts]  # the reference is the reference
    assert obj.counters.num_loss == 3 * len(pts)
    assert_untouched(model, snap)


def test_batched_equals_one_at_a_time_float32_f1_shaped():
    torch.manual_seed(0)
    layers = [nn.Flatten()]
    for fan_in in (64, 128, 128):
        layers += [nn.Linear(fan_in, 128), nn.BatchNorm1d(128), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(128, 10))
    x, y = torch.rand(500, 1, 8, 8), torch.randint(0, 10, (500,))
    obj = ModelObjective(model, x, y, bn_mode="batch", chunk_size=200)
    pts = _points(flatten_params(model), num=5)
    ref_loss, ref_acc = evaluate_points(obj, pts, batched=False)
    loss, acc = evaluate_points(obj, pts, batched=True)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert max(abs(a - b) for a, b in zip(acc, ref_acc, strict=True)) <= 100.0 / 500  # a tie at most


def test_plain_callables_are_evaluated_one_at_a_time():
    f = FunctionObjective(lambda v: (v**2).sum(), torch.zeros(3))
    loss, acc = evaluate_points(f, [torch.ones(3), 2 * torch.ones(3)], batched=True)
    assert loss == [3.0, 12.0] and all(a != a for a in acc)  # NaN accuracies


def test_networks_vmap_cannot_batch_fall_back(caplog):
    class Branchy(nn.Module):  # data-dependent control flow: not vmap-able
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 4).double()

        def forward(self, x):
            out = self.lin(x)
            return out if float(out.sum()) > -1e9 else -out

    model = Branchy()
    x, y = tiny_data(20)
    obj = ModelObjective(model, x, y, chunk_size=8)
    pts = _points(flatten_params(model), num=3)
    with caplog.at_level(logging.INFO, logger="sharpminima.landscape.batched"):
        got = evaluate_points(obj, pts, batched=True, group_size=2)
    assert "one at a time" in caplog.text
    assert obj.counters.num_loss == 3
    assert got == evaluate_points(obj, pts, batched=False)


def test_group_size_is_checked_and_chosen_from_memory(monkeypatch):
    model = tiny_mlp(batch_norm=True)
    obj = ModelObjective(model, *tiny_data(64), chunk_size=32)
    with pytest.raises(ConfigError, match="group_size must be a positive integer, got 0"):
        evaluate_points(obj, [flatten_params(model)], group_size=0)
    assert 1 <= obj.auto_group_size() <= batched_mod.DEFAULT_GROUP_SIZE
    monkeypatch.setattr(batched_mod, "MEMORY_BUDGET", 1)
    assert obj.auto_group_size() == 1
    assert not default_batched("cpu") and default_batched(torch.device("cuda"))


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
def test_interpolation_batched_equals_one_at_a_time(bn_mode):
    model_a, model_b = tiny_mlp(batch_norm=True, seed=0), tiny_mlp(batch_norm=True, seed=1)
    train = ModelObjective(model_a, *tiny_data(64, seed=1), bn_mode=bn_mode, chunk_size=32)
    test = ModelObjective(model_a, *tiny_data(40, seed=5), bn_mode=bn_mode, chunk_size=32)
    xa, xb = flatten_params(model_a), flatten_params(model_b)
    ref = interpolate(train, xa, xb, objective_test=test, batched=False)
    got = interpolate(train, xa, xb, objective_test=test, batched=True)
    for field in ("train_loss", "test_loss"):
        torch.testing.assert_close(getattr(got, field), getattr(ref, field), rtol=1e-12, atol=0)
    for field in ("train_acc", "test_acc"):
        assert torch.equal(getattr(got, field), getattr(ref, field))
    assert got.value == pytest.approx(ref.value, rel=1e-9, abs=1e-12)
    assert got.cost.num_loss == ref.cost.num_loss == 2 * 25


def test_surface_batched_equals_one_at_a_time():
    model = tiny_mlp(batch_norm=True)
    obj = ModelObjective(model, *tiny_data(64), bn_mode="batch", chunk_size=32)
    x0 = flatten_params(model)
    d, e = (random_direction(x0, obj, seed=s) for s in (1, 2))
    ref = loss_surface_2d(obj, x0, d, e, alphas=[-1, 0, 1], betas=[-0.5, 0, 0.5, 1], batched=False)
    got = loss_surface_2d(obj, x0, d, e, alphas=[-1, 0, 1], betas=[-0.5, 0, 0.5, 1], batched=True)
    torch.testing.assert_close(got.losses, ref.losses, rtol=1e-12, atol=0)
    assert torch.equal(got.accuracies, ref.accuracies)
    assert got.cost.num_loss == ref.cost.num_loss == 12


@pytest.mark.parametrize("antithetic", [True, False])
def test_average_sharpness_batched_equals_one_at_a_time(antithetic):
    model = tiny_mlp(batch_norm=True)
    obj = ModelObjective(model, *tiny_data(64), bn_mode="eval", chunk_size=32)
    x0 = flatten_params(model)
    kw = {"sigma": 0.05, "num_draws": 6, "antithetic": antithetic, "seed": 3}
    ref = average_sharpness(obj, x0, batched=False, **kw)
    got = average_sharpness(obj, x0, batched=True, **kw)
    assert got.f0 == pytest.approx(ref.f0, rel=1e-12)
    assert got.terms == pytest.approx(ref.terms, rel=1e-9, abs=1e-13)
    assert got.cost.num_loss == ref.cost.num_loss == 1 + 6 * (2 if antithetic else 1)
