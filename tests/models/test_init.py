import math

import pytest
import torch
from torch import nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.models.init import initialize
from sharpminima.train import train
from sm_testing import small_mlp


def _net():
    return nn.Sequential(
        nn.Conv2d(8, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(400, 300),
        nn.Linear(300, 300),
    )


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize(
    ("scheme", "std_of"),
    [
        ("kaiming", lambda fan_in, fan_out: math.sqrt(2 / fan_in)),
        ("xavier", lambda fan_in, fan_out: math.sqrt(2 / (fan_in + fan_out))),
    ],
)
def test_normal_schemes_match_their_std(scheme, std_of, scale):
    torch.manual_seed(0)
    net = initialize(_net(), scheme, scale)
    conv, bn, lin = net[0], net[1], net[4]
    for layer, fan_in, fan_out in ((conv, 8 * 9, 16 * 9), (lin, 400, 300)):
        w = layer.weight
        want = scale * std_of(fan_in, fan_out)
        # sample std of n normal draws has relative standard error 1 / sqrt(2n)
        assert abs(w.std().item() / want - 1) < 5 / math.sqrt(2 * w.numel())
        assert abs(w.mean().item()) < 5 * want / math.sqrt(w.numel())
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert torch.equal(bn.weight, torch.ones(16)) and torch.equal(bn.bias, torch.zeros(16))


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_orthogonal_rows_are_orthonormal_times_scale(scale):
    torch.manual_seed(0)
    net = initialize(_net(), "orthogonal", scale)
    square = net[5].weight  # (300, 300)
    wide = net[4].weight  # (300, 400)
    conv = net[0].weight.reshape(16, -1)  # (16, 72): wide once flattened
    for w in (square, wide, conv):
        assert torch.allclose(w @ w.T, scale**2 * torch.eye(w.shape[0]), atol=1e-4)
    assert torch.allclose(square.T @ square, scale**2 * torch.eye(300), atol=1e-4)


def test_default_keeps_pytorch_draw_and_scales_weights_only():
    torch.manual_seed(0)
    ref = _net()
    torch.manual_seed(0)
    same = initialize(_net(), "default", 1.0)
    assert all(
        torch.equal(a, b) for a, b in zip(ref.state_dict().values(), same.state_dict().values(), strict=True)
    )
    torch.manual_seed(0)
    scaled = initialize(_net(), "default", 2.0)
    assert torch.equal(scaled[4].weight, 2 * ref[4].weight) and torch.equal(scaled[4].bias, ref[4].bias)


def test_initial_weights_follow_the_seed_in_training(tiny):
    cfg = TrainConfig(net="small", dataset="tiny", batch_size=100, epochs=1, init="kaiming", init_scale=0.5)
    a, b = (train(cfg, dataset=tiny, model_factory=small_mlp) for _ in range(2))
    c = train(cfg.replace(seed=1), dataset=tiny, model_factory=small_mlp)
    assert torch.equal(a.init_state["1.weight"], b.init_state["1.weight"])
    assert not torch.equal(a.init_state["1.weight"], c.init_state["1.weight"])
    assert torch.equal(a.init_state["1.bias"], torch.zeros(32))
    assert abs(a.init_state["1.weight"].std().item() - 0.5 * math.sqrt(2 / 64)) < 0.01


def test_init_errors():
    with pytest.raises(ConfigError, match="unknown init scheme 'he'; choose one of default, kaiming"):
        initialize(_net(), "he")
    with pytest.raises(ConfigError, match="init scale must be positive, got -1"):
        initialize(_net(), "kaiming", -1)
