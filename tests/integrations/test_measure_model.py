"""Measuring mid-training leaves every piece of training state as it was."""

import copy

import pytest
import torch
from torch import nn

from sharpminima.errors import ConfigError
from sharpminima.integrations import log_results, measure_model, metrics_of


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 3))


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _state(model, opt):
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "flags": [m.training for m in model.modules()],
        "opt": copy.deepcopy(opt.state_dict()),
        "rng": torch.get_rng_state().clone(),
    }


def _assert_same(a, b):
    assert a["flags"] == b["flags"]
    assert torch.equal(a["rng"], b["rng"])
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    for k in a["grads"]:
        assert (a["grads"][k] is None) == (b["grads"][k] is None), k
        if a["grads"][k] is not None:
            assert torch.equal(a["grads"][k], b["grads"][k]), k
    for k, entry in a["opt"]["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, b["opt"]["state"][k][name]), (k, name)


@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
def test_measuring_mid_training_changes_nothing(bn_mode):
    model = _net()
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(3):  # a training state with optimizer moments and .grad set
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    before = _state(model, opt)
    results = measure_model(
        model,
        [(x[:32], y[:32]), (x[32:], y[32:])],
        [
            "keskar_sharpness",
            ("hessian_eigenvalues", {"k": 2}),
            "hessian_trace",
            "gradient_noise_scale",
            "average_sharpness",
            "relative_flatness",
        ],
        bn_mode=bn_mode,
    )
    _assert_same(before, _state(model, opt))
    assert set(results) == {
        "keskar_sharpness",
        "hessian_eigenvalues.k_2",
        "hessian_trace",
        "gradient_noise_scale",
        "average_sharpness",
        "relative_flatness",
    }
    assert results["hessian_eigenvalues.k_2"].settings["bn_mode"] == bn_mode
    assert results["gradient_noise_scale"].settings["bn_mode"] == "eval"  # needs running statistics


def test_measure_model_checks_its_measures_first():
    x, y = _data()
    with pytest.raises(ConfigError, match="unknown measure 'flatness'"):
        measure_model(_net(), (x, y), ["flatness"])
    with pytest.raises(ConfigError, match="has no parameter rho"):
        measure_model(_net(), (x, y), [("keskar_sharpness", {"rho": 1})])


def test_log_results_to_a_function_and_errors():
    x, y = _data()
    results = measure_model(_net(), (x, y), [("keskar_sharpness", {"max_iters": 2}), "hessian_trace"])
    seen = []
    metrics = log_results(results, lambda m, step: seen.append((m, step)), step=7)
    assert seen == [(metrics, 7)] and "sharpminima/hessian_trace_stderr" in metrics
    assert metrics == metrics_of(results)
    with pytest.raises(ConfigError, match="cannot log to a int"):
        log_results(results, 3)
