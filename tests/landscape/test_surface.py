import json

import pytest
import torch
from cases import DTYPE, assert_untouched, mlp_case, state_snapshot

from sharpminima.errors import ConfigError
from sharpminima.landscape.surface import (
    loss_surface,
    loss_surface_1d,
    loss_surface_2d,
    random_direction,
)


def test_filter_normalisation_matches_each_filter_norm():
    obj = mlp_case("bn-eval").objective()
    x = obj.base_point()
    d = random_direction(x, obj, seed=0)
    dp, wp = obj.unflatten(d), obj.unflatten(x)
    for name in obj.names:
        if wp[name].ndim >= 2:
            torch.testing.assert_close(dp[name].norm(dim=1), wp[name].norm(dim=1), rtol=1e-12,
                                       atol=0)
        else:  # biases and BN parameters: Li et al.'s ignore='biasbn'
            assert bool((dp[name] == 0).all()), name


def test_conv_filters_and_one_d_options():
    conv = torch.nn.Conv2d(2, 3, 3).to(DTYPE)
    shapes = [p.shape for p in conv.parameters()]
    x = torch.cat([p.detach().reshape(-1) for p in conv.parameters()])
    d = random_direction(x, shapes, seed=1)
    dw = d[:54].view(3, 2, 3, 3)
    torch.testing.assert_close(dw.flatten(1).norm(dim=1), conv.weight.flatten(1).norm(dim=1),
                               rtol=1e-12, atol=0)
    dw_bias = random_direction(x, shapes, seed=1, one_d="weights")[54:]
    assert torch.equal(dw_bias, conv.bias.detach())
    nb = random_direction(x, shapes, seed=1, one_d="filter")[54:]
    assert float(nb.norm()) == pytest.approx(float(conv.bias.detach().norm()), rel=1e-12)
    layer = random_direction(x, shapes, seed=1, normalization="layer")
    assert float(layer[:54].norm()) == pytest.approx(float(conv.weight.detach().norm()), rel=1e-12)
    raw = random_direction(x, shapes, seed=1, normalization="none")
    assert torch.equal(raw, torch.randn(x.numel(), generator=torch.Generator().manual_seed(1),
                                        dtype=DTYPE))


def test_direction_is_deterministic_and_zero_filters_stay_zero():
    shapes = [(2, 3)]
    x = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 2.0], dtype=DTYPE)
    d = random_direction(x, shapes, seed=5)
    assert torch.equal(d[:3], torch.zeros(3, dtype=DTYPE))
    assert float(d[3:].norm()) == pytest.approx(3.0, rel=1e-12)
    assert torch.equal(d, random_direction(x, shapes, seed=5))
    assert not torch.equal(d, random_direction(x, shapes, seed=6))
    x32 = x.float()
    assert random_direction(x32, shapes, seed=5).dtype == torch.float32


def test_1d_surface_values_are_set_from_the_frozen_centre():
    case = mlp_case("bn-batch")
    before = state_snapshot(case.model)
    obj = case.objective()
    x0 = obj.base_point()
    d = random_direction(x0, obj, seed=0)
    alphas = torch.linspace(-0.5, 0.5, 5, dtype=DTYPE)
    res = loss_surface_1d(obj, x0, d, alphas)
    assert_untouched(case.model, before)
    ref = case.objective()
    for i, a in enumerate(alphas.tolist()):
        loss, acc = ref.loss_and_accuracy(x0 + a * d)
        assert float(res.losses[i]) == pytest.approx(loss, rel=1e-13)
        assert float(res.accuracies[i]) == acc
    assert res.value == float(res.losses[2]) == pytest.approx(float(ref.loss(x0)), rel=1e-13)
    assert res.settings["bn_mode"] == "batch" and res.cost.num_loss == 5
    json.dumps(res.to_dict())


def test_2d_surface_grid_and_plain_callable():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, generator=g, dtype=DTYPE)
    d = torch.randn(6, generator=g, dtype=DTYPE)
    e = torch.randn(6, generator=g, dtype=DTYPE)

    def f(z):
        return (z**2).sum() + z[0]

    res = loss_surface_2d(f, x0, d, e, alphas=[-1.0, 0.5, 1.0], betas=[0.25, 2.0])
    assert res.losses.shape == (3, 2) and res.accuracies is None
    for i, a in enumerate([-1.0, 0.5, 1.0]):
        for j, b in enumerate([0.25, 2.0]):
            assert float(res.losses[i, j]) == pytest.approx(float(f(x0 + a * d + b * e)), rel=1e-14)
    assert res.value == float(f(x0))  # centre not on the grid: evaluated separately
    assert res.cost.num_loss == 7
    default = loss_surface_2d(f, x0, d, e)
    assert default.losses.shape == (11, 11) and default.value == float(f(x0))
    assert loss_surface_1d(f, x0, d).losses.shape == (21,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"normalization": "global"}, "unknown normalization"),
        ({"one_d": "drop"}, "unknown one_d option"),
    ],
)
def test_direction_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        random_direction(torch.ones(6), [(2, 3)], seed=0, **kwargs)


def test_direction_shapes_must_cover_x():
    with pytest.raises(ConfigError, match="cover 6 entries"):
        random_direction(torch.ones(5), [(2, 3)], seed=0)


def test_surface_raises():
    x = torch.ones(3, dtype=DTYPE)

    def f(z):
        return z.sum()

    with pytest.raises(ConfigError, match="one or two directions"):
        loss_surface(f, x, [x, x, x], [[0.0]] * 3)
    with pytest.raises(ConfigError, match="one or two directions"):
        loss_surface(f, x, [x], [[0.0], [1.0]])
    with pytest.raises(ConfigError, match="direction shape"):
        loss_surface(f, x, [torch.ones(4, dtype=DTYPE)], [[0.0]])
    with pytest.raises(ConfigError, match="non-empty sequence of finite"):
        loss_surface(f, x, [x], [[]])
    with pytest.raises(ConfigError, match="non-empty sequence of finite"):
        loss_surface(f, x, [x], [[float("inf")]])
