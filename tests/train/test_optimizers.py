"""LARS, LAMB and the optimizer registry: trust ratios, steps by hand, resume, options."""

import math
from types import SimpleNamespace

import pytest
import torch

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.store import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from sharpminima.train import make_optimizer, train
from sharpminima.train.layerwise import LAMB, LARS, lamb_trust_ratio, lars_trust_ratio
from sharpminima.train.optim import optimizer_options
from sm_testing import make_tiny, small_mlp

D = torch.float64


def test_lars_trust_ratio_matches_its_formula():
    w, g = torch.tensor([3.0, 4.0]), torch.tensor([1.2, 1.6])  # ||w|| = 5, ||g|| = 2
    assert lars_trust_ratio(w, g, 1e-3, 0.1).item() == pytest.approx(1e-3 * 5 / (2 + 0.1 * 5))
    assert lars_trust_ratio(w, g, 0.02, 0.0).item() == pytest.approx(0.05)
    assert lars_trust_ratio(torch.zeros(2), g, 1e-3, 0.1).item() == 1.0
    assert lars_trust_ratio(w, torch.zeros(2), 1e-3, 0.1).item() == 1.0


def test_lamb_trust_ratio_matches_its_formula():
    w, r = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.2, 1.6]])
    assert lamb_trust_ratio(w, r).item() == pytest.approx(2.5)
    assert lamb_trust_ratio(w, r, weight_norm_max=4.0).item() == pytest.approx(2.0)
    assert lamb_trust_ratio(torch.zeros(1, 2), r).item() == 1.0
    assert lamb_trust_ratio(w, torch.zeros(1, 2)).item() == 1.0


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=D))
    bias = torch.nn.Parameter(torch.randn(3, generator=g, dtype=D))
    return weight, bias


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(3, 4, generator=g, dtype=D), torch.randn(3, generator=g, dtype=D)


def _run(opt, params, steps):
    for t in range(steps):
        for p, g in zip(params, _grads(t), strict=True):
            p.grad = g.clone()
        opt.step()


def test_lars_steps_equal_the_algorithm_by_hand():
    lr, m, wd, eta = 0.5, 0.9, 0.01, 0.02
    params = _params()
    _run(LARS(params, lr=lr, momentum=m, weight_decay=wd, trust_coefficient=eta), params, 3)
    (w, b), (vw, vb) = [p.detach().clone() for p in _params()], (0.0, 0.0)
    for t in range(3):
        gw, gb = _grads(t)
        local = eta * w.norm() / (gw.norm() + wd * w.norm())
        vw = m * vw + lr * local * (gw + wd * w)
        vb = m * vb + lr * gb  # 1-d: excluded, plain momentum SGD
        w, b = w - vw, b - vb
    torch.testing.assert_close(params[0].detach(), w)
    torch.testing.assert_close(params[1].detach(), b)


def test_lamb_steps_equal_the_algorithm_by_hand():
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.99), 1e-6, 0.1
    params = _params()
    _run(LAMB(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), params, 3)
    x = [p.detach().clone() for p in _params()]
    m, v = [torch.zeros_like(p) for p in x], [torch.zeros_like(p) for p in x]
    for t in range(1, 4):
        for i, g in enumerate(_grads(t - 1)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            r = (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
            if i == 0:  # the 2-d weight: decay and trust ratio; the bias is Adam's step
                r = r + wd * x[i]
                r = x[i].norm() / r.norm() * r
            x[i] = x[i] - lr * r
    torch.testing.assert_close(params[0].detach(), x[0])
    torch.testing.assert_close(params[1].detach(), x[1])


def test_exclude_1d_off_adapts_biases_too():
    params = _params()
    _run(LARS(params, lr=0.5, momentum=0.0, trust_coefficient=0.02, exclude_1d=False), params, 1)
    b0, (_, gb) = _params()[1].detach(), _grads(0)
    torch.testing.assert_close(params[1].detach(), b0 - 0.5 * 0.02 * b0.norm() / gb.norm() * gb)


@pytest.mark.parametrize("optimizer", ["lars", "lamb", "nesterov"])
def test_state_dict_round_trips_through_a_checkpoint(tmp_path, optimizer):
    cfg = TrainConfig(optimizer=optimizer, lr=0.1)
    a, b = _params(), _params()
    opt_a = make_optimizer(a, cfg)
    _run(opt_a, a, 2)
    save_checkpoint(tmp_path / "opt.safetensors", *flatten_state({"optimizer": opt_a.state_dict()}))
    with torch.no_grad():
        for p, q in zip(b, a, strict=True):
            p.copy_(q)
    opt_b = make_optimizer(b, cfg)
    opt_b.load_state_dict(unflatten_state(*load_checkpoint(tmp_path / "opt.safetensors"))["optimizer"])
    for opt, params in ((opt_a, a), (opt_b, b)):
        for p, g in zip(params, _grads(7), strict=True):
            p.grad = g.clone()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_registry_builds_the_named_optimizers():
    params = list(_params())
    cfg = TrainConfig(lr=0.1, momentum=0.8, weight_decay=1e-4, betas=(0.8, 0.9), adam_eps=1e-7)
    lars = make_optimizer(params, cfg.replace(optimizer="lars"))
    assert isinstance(lars, LARS)
    group = lars.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["trust_coefficient"]) == (0.8, 1e-4, 1e-3)
    lamb = make_optimizer(params, cfg.replace(optimizer="lamb")).param_groups[0]
    assert (lamb["betas"], lamb["eps"], lamb["weight_decay"]) == ((0.8, 0.9), 1e-7, 1e-4)
    assert lamb["exclude_1d"] and lamb["weight_norm_max"] is None
    nesterov = make_optimizer(params, cfg.replace(optimizer="nesterov"))
    assert isinstance(nesterov, torch.optim.SGD) and nesterov.param_groups[0]["nesterov"]


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="optimizer 'nesterov' needs momentum > 0, got 0.0"):
        make_optimizer(list(_params()), TrainConfig(optimizer="nesterov", momentum=0.0))


def test_optimizer_options_are_merged_and_checked():
    given = SimpleNamespace(optimizer="lars", optimizer_args=(("trust_coefficient", 0.01),))
    assert optimizer_options(given) == {"trust_coefficient": 0.01, "exclude_1d": True}
    assert optimizer_options(TrainConfig(optimizer="lamb")) == {"exclude_1d": True, "weight_norm_max": None}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['beta'\] for optimizer 'lars'"):
        optimizer_options(SimpleNamespace(optimizer="lars", optimizer_args=(("beta", 1),)))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['x'\] for optimizer 'adam'; it takes \[\]"):
        optimizer_options(SimpleNamespace(optimizer="adam", optimizer_args=(("x", 1),)))
    with pytest.raises(ConfigError, match="optimizer 'lamb' option 'weight_norm_max' must be a positive"):
        optimizer_options(SimpleNamespace(optimizer="lamb", optimizer_args=(("weight_norm_max", 0),)))
    with pytest.raises(ConfigError, match="optimizer 'lars' option 'exclude_1d' must be true or false"):
        optimizer_options(SimpleNamespace(optimizer="lars", optimizer_args=(("exclude_1d", "no"),)))


@pytest.mark.parametrize(("optimizer", "lr"), [("lars", 1.0), ("lamb", 1e-2), ("nesterov", 0.05)])
def test_training_with_each_optimizer_learns(optimizer, lr):
    cfg = TrainConfig(net="small", dataset="tiny", batch_size=50, epochs=2, optimizer=optimizer, lr=lr)
    run = train(cfg, dataset=make_tiny(n_train=200, n_test=50), model_factory=small_mlp)
    assert run.status == "done"
    assert run.history[-1]["train_loss"] < math.log(4)
