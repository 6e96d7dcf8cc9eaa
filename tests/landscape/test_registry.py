"""The measure registry: one definition per measure, canonical keys, one cached call."""

import dataclasses
import json

import pytest
import torch
from cases import mlp_case

from sharpminima.errors import ConfigError
from sharpminima.landscape.registry import (
    DataSpec,
    Inputs,
    Measure,
    MeasureParams,
    Request,
    all_measures,
    cached_measure,
    compute,
    get_measure,
    register_measure,
)
from sharpminima.store.provenance import count_measurements


def test_every_measure_has_frozen_typed_defaults_and_a_json_key():
    for measure in all_measures():
        params = measure.make_params()
        assert dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen, measure.name
        json.dumps(params.key())
        assert measure.summary and measure.passes(params) >= 0, measure.name


def test_aliases_reach_one_measure():
    assert get_measure("sharpness") is get_measure("keskar_sharpness") is get_measure("keskar-sharpness")
    assert get_measure("hessian_top_eigenvalue").name == "hessian_eigenvalues"
    with pytest.raises(ConfigError, match="unknown measure 'nope'; choose one of"):
        get_measure("nope")


def test_keys_are_canonical():
    keskar = get_measure("keskar_sharpness")
    full = keskar.make_params({"eps": 1, "seed": 7, "p": 3})
    assert full.eps == 1.0 and isinstance(full.eps, float)  # 1 and 1.0 are one key
    assert full.key() == keskar.make_params({"eps": 1.0}).key()  # subspace settings do not matter
    random = keskar.make_params({"subspace": "random", "seed": 7})
    assert random.key()["seed"] == 7 and random.key() != keskar.make_params({"subspace": "random"}).key()
    eps_study = get_measure("epsilon_study")
    assert eps_study.make_params({"eps": [1e-3, 1e-4, 1e-3]}).key()["eps"] == [1e-4, 1e-3]


def test_data_spec_counts_samples_so_all_and_their_number_are_one_key():
    a = Request.of("keskar_sharpness", DataSpec(num_samples=100, chunk_size=50), eps=1e-3)
    b = Request.of("keskar_sharpness", DataSpec(num_samples=100, chunk_size=50), params={"eps": 0.001})
    assert a.key() == b.key() and a.key()["point"] == "final"
    noise = Request.of("gradient_noise_scale", DataSpec(num_samples=100, bn_mode="batch"))
    assert noise.key()["bn_mode"] == "eval"  # per-example gradients need running statistics
    norm = Request.of("weight_norm", DataSpec(num_samples=100))
    assert norm.data is None and set(norm.key()) == {"point"}


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"rho": 1}, "has no parameter rho"),
        ({"eps": -1.0}, "eps must be a positive finite number"),
        ({"eps": "big"}, "eps must be a finite number"),
        ({"subspace": "diagonal"}, "subspace must be one of"),
        ({"max_iters": 2.5}, "max_iters must be an integer"),
    ],
)
def test_bad_parameters_are_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        get_measure("keskar_sharpness").make_params(values)


def test_old_parameter_names_warn_and_work():
    with pytest.warns(DeprecationWarning, match="maxiter is deprecated"):
        params = get_measure("keskar_sharpness").make_params({"maxiter": 4})
    assert params.max_iters == 4
    with pytest.warns(DeprecationWarning, match="samples is deprecated"):
        assert get_measure("hessian_trace").make_params({"samples": 6}).num_probes == 6
    with pytest.raises(ConfigError, match="give max_iters only"):
        get_measure("keskar_sharpness").make_params({"maxiter": 4, "max_iters": 5})


@dataclasses.dataclass(frozen=True)
class _Chunk(MeasureParams):
    chunk_size: int = 1


def test_registration_refuses_clashes():
    with pytest.raises(ConfigError, match="data fields of the key"):
        register_measure(Measure("clash", _Chunk, lambda i, p: None, "x"))
    with pytest.raises(ConfigError, match="already names measure 'keskar_sharpness'"):
        register_measure(Measure("other", MeasureParams, lambda i, p: None, "x", aliases=("sharpness",)))


class _Cache:
    def __init__(self):
        self.rows, self.adds = {}, 0

    def get_measurement(self, run_id, kind, params):
        return self.rows.get((run_id, kind, json.dumps(params, sort_keys=True)))

    def add_measurement(self, run_id, kind, params, value, cost, result):
        self.adds += 1
        self.rows[(run_id, kind, json.dumps(params, sort_keys=True))] = {
            "value": value,
            "cost": cost,
            "result": result,
        }
        return self.adds


def test_cached_measure_computes_once():
    case = mlp_case("plain")
    built = []

    def build():
        built.append(1)
        return Inputs(case.objective(), case.x0)

    cache = _Cache()
    request = Request.of("hessian_trace", DataSpec(num_samples=64, chunk_size=32), num_probes=5)
    with count_measurements() as outer:
        first = cached_measure(cache, "run", request, build)
        with count_measurements() as inner:  # the innermost tally counts
            second = cached_measure(cache, "run", request, build)
        cached_measure(cache, "run", request, build)  # asked again in the job that computed it
    assert not first.reused and second.reused and len(built) == 1 and cache.adds == 1
    assert (outer.computed, outer.reused, inner.computed, inner.reused) == (1, 0, 0, 1)
    assert first.value == second.value == first["value"]
    direct = compute("hessian_trace", case.objective(), case.x0, {"num_probes": 5})
    assert direct.value == first.value
    assert not cached_measure(None, "run", request, build).reused


def test_inputs_are_checked_before_computing():
    case = mlp_case("plain")
    with pytest.raises(ConfigError, match="needs the initial weights"):
        compute("distance_from_init", None, case.x0)
    with pytest.raises(ConfigError, match="needs a second point"):
        compute("interpolation", case.objective(), case.x0)
    with pytest.raises(ConfigError, match="weights are not finite"):
        compute("keskar_sharpness", case.objective(), torch.full_like(case.x0, float("nan")))
    with pytest.raises(ConfigError, match="needs a network objective"):
        compute("ggn_eigenvalues", lambda z: (z**2).sum(), torch.ones(3))
