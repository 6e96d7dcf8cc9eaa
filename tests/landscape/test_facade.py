import pytest
import torch

from sharpminima.errors import ConfigError
from sharpminima.landscape import ModelObjective, flatten_params
from sharpminima.landscape.eigen import hessian_eigenvalues
from sharpminima.landscape.facade import Landscape
from sharpminima.landscape.sharpness import keskar_sharpness
from sm_testing import make_tiny, small_mlp


@pytest.fixture
def setup():
    torch.manual_seed(0)
    data = make_tiny(200, 50)
    model = small_mlp()
    model.train()
    return model, data


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def test_facade_matches_functional_core_and_leaves_model_alone(setup):
    model, data = setup
    before, modes = _snapshot(model)
    land = Landscape(model, data.x_train, data.y_train, bn_mode="batch", chunk_size=100)
    obj = ModelObjective(model, data.x_train, data.y_train, bn_mode="batch", chunk_size=100)
    x = flatten_params(model)
    assert land.keskar_sharpness(1e-3).value == pytest.approx(keskar_sharpness(obj, x, eps=1e-3).value)
    assert land.top_eigenvalues(2).values[0] == pytest.approx(
        hessian_eigenvalues(obj, x, 2).values[0], rel=1e-3)
    land.trace(num_probes=5)
    land.keskar_sharpness(1e-3, subspace="random", p=5, seed=1)
    land.average_sharpness(1e-3, num_draws=4)
    land.surface(dims=1, alphas=[-0.5, 0.0, 0.5])
    land.top_eigenvalues(1, curvature="ggn")
    after, modes_after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes == modes_after


def test_facade_distance_and_norms(setup):
    model, data = setup
    land = Landscape(model, data.x_train, data.y_train)
    x = flatten_params(model)
    assert land.weight_norms().value == pytest.approx(float(x.norm()), rel=1e-6)
    assert land.distance(torch.zeros_like(x)).value == pytest.approx(float(x.norm()), rel=1e-6)


def test_facade_errors(setup):
    model, data = setup
    with pytest.raises(ConfigError, match="the model is on cpu but device=meta"):
        Landscape(model, data.x_train, data.y_train, device="meta")
    land = Landscape(model, data.x_train, data.y_train)
    with pytest.raises(ConfigError, match="subspace must be 'full' or 'random'"):
        land.keskar_sharpness(subspace="diagonal")
    with pytest.raises(ConfigError, match="curvature must be 'hessian' or 'ggn'"):
        land.top_eigenvalues(curvature="fisher")
    with pytest.raises(ConfigError, match="surface dims must be 1 or 2"):
        land.surface(dims=3)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_facade_trace_methods_match_the_functional_core(setup, method):
    model, data = setup
    land = Landscape(model, data.x_train, data.y_train, bn_mode="eval", chunk_size=100)
    obj = ModelObjective(model, data.x_train, data.y_train, bn_mode="eval", chunk_size=100)
    from sharpminima.landscape.trace import hessian_trace

    r = land.trace(12, method=method, seed=3)
    ref = hessian_trace(obj, flatten_params(model), num_probes=12, method=method, seed=3)
    assert r.method == method and r.num_matvecs <= 12
    assert r.value == pytest.approx(ref.value, rel=1e-5) and r.stderr == pytest.approx(ref.stderr, rel=1e-5)
    with pytest.raises(ConfigError, match="unknown trace method"):
        land.trace(12, method="hutchplusplus")
