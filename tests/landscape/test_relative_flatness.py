"""Relative flatness (Petzka et al. 2021) against its definition on a dense Hessian."""

import pytest
import torch
from cases import DTYPE, MLP_CASES, mlp_case, tiny_data
from torch import nn

from sharpminima.errors import ConfigError
from sharpminima.landscape import ModelObjective, flatten_params, relative_flatness


def _by_definition(case, name):
    """``sum_{s,s'} <w_s, w_s'> tr(H_{s,s'})`` from the dense Hessian's block of ``name``."""
    obj = case.objective()
    index = obj.names.index(name)
    start = sum(obj.numels[:index])
    d, m = obj.shapes[index][0], obj.numels[index] // obj.shapes[index][0]
    block = case.hessian[start : start + d * m, start : start + d * m].reshape(d, m, d, m)
    w = case.x0[start : start + d * m].reshape(d, m)
    traces = torch.einsum("sjtj->st", block)  # tr(H_{s,t})
    return float(((w @ w.T) * traces).sum())


@pytest.mark.parametrize("name", MLP_CASES)
def test_exact_mode_equals_the_definition(name):
    case = mlp_case(name)
    obj = case.objective()
    for layer in ("0.weight", obj.names[-2]):  # the first layer and the last linear layer
        got = relative_flatness(obj, case.x0, layer=layer, method="exact")
        assert got.value == pytest.approx(_by_definition(case, layer), rel=1e-9)
        assert got.stderr == 0 and got.num_probes == got.shape[0] * got.shape[1]


def test_the_default_layer_is_the_last_linear_layer():
    case = mlp_case("plain")
    got = relative_flatness(case.objective(), case.x0, method="exact")
    assert got.layer == case.objective().names[-2] and got.shape == (4, 10)


def test_hutchinson_estimate_is_unbiased_within_its_standard_error():
    case = mlp_case("bn-eval")
    layer = case.objective().names[-2]
    exact = _by_definition(case, layer)
    got = relative_flatness(case.objective(), case.x0, layer=layer, num_probes=3000, seed=1)
    assert abs(got.value - exact) <= 4 * got.stderr
    assert got.stderr < 0.1 * abs(exact)
    assert got.cost.num_hvp == 3000


def test_invariant_under_rescaling_the_layers_around_a_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False)).to(DTYPE)
    x, y = tiny_data()
    before = relative_flatness(ModelObjective(model, x, y), flatten_params(model), layer="2", method="exact")
    with torch.no_grad():  # f is unchanged: relu(a W1 x) = a relu(W1 x)
        model[0].weight.mul_(3.0)
        model[2].weight.div_(3.0)
    after = relative_flatness(ModelObjective(model, x, y), flatten_params(model), layer="2", method="exact")
    assert after.value == pytest.approx(before.value, rel=1e-10)


def test_errors():
    case = mlp_case("plain")
    obj = case.objective()
    with pytest.raises(ConfigError, match="no trainable parameter 'nope'"):
        relative_flatness(obj, case.x0, layer="nope")
    with pytest.raises(ConfigError, match="needs a weight matrix"):
        relative_flatness(obj, case.x0, layer="0.bias")
    with pytest.raises(ConfigError, match="num_probes must be an integer >= 2"):
        relative_flatness(obj, case.x0, num_probes=1)
    with pytest.raises(ConfigError, match="needs a network objective"):
        relative_flatness(lambda z: (z**2).sum(), torch.ones(3, dtype=DTYPE))
