import copy
import json
import math

import numpy as np
import pytest
import torch
from cases import (
    DTYPE,
    assert_untouched,
    mlp_case,
    quadratic,
    separable_convex,
    state_snapshot,
)

from sharpminima.errors import ConfigError
from sharpminima.landscape import box_search
from sharpminima.landscape.objective import ModelObjective, as_objective
from sharpminima.landscape.sharpness import (
    BoxSearch,
    keskar_halfwidth,
    keskar_sharpness,
    keskar_sharpness_multistart,
    random_subspace,
    subspace_coordinates,
)

DRIVERS = ["setulb", "scipy"]




def metric(fmax: float, f0: float) -> float:
    return 100.0 * (fmax - f0) / (1.0 + f0)


class Recorder:
    """Wrap f and record every value it is evaluated at."""

    def __init__(self, f):
        self.f = f
        self.values: list[float] = []

    def __call__(self, z):
        v = self.f(z)
        self.values.append(float(v.detach()))
        return v


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("eps", [1e-3, 5e-2])
def test_separable_convex_matches_corner_closed_form(driver, eps):
    f, x, box_max = separable_convex()
    res = keskar_sharpness(f, x, eps=eps, max_iters=100, driver=driver)
    f0 = float(f(x))
    expected = metric(box_max(eps * (x.abs() + 1)), f0)
    assert res.value == pytest.approx(expected, rel=1e-6)
    assert res.f0 == f0
    assert res.fmax == pytest.approx(box_max(eps * (x.abs() + 1)), rel=1e-12)
    assert res.settings["driver"] == driver


@pytest.mark.parametrize("max_iters", [1, 10])
def test_linear_function_max_is_sign_corner(max_iters):
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(30, generator=g, dtype=DTYPE)
    x = torch.randn(30, generator=g, dtype=DTYPE)

    def f(z):
        return grad @ z + 2.0

    eps = 1e-3
    res = keskar_sharpness(f, x, eps=eps, max_iters=max_iters)
    f0 = float(f(x))
    expected = 100 * eps * float((grad.abs() * (x.abs() + 1)).sum()) / (1 + f0)
    assert res.value == pytest.approx(expected, rel=1e-9)
    # the maximiser is the corner x + w sign(g)
    assert torch.allclose(res.y, eps * (x.abs() + 1) * grad.sign(), rtol=1e-12, atol=0)


def test_sign_the_optimizer_increases_f():
    """Smoothout's bug (value -f with gradient +f) makes the 'ascent' descend; ours ascends."""
    f, _, x = quadratic([3.0, 1.0, 0.5, 0.2])
    res = keskar_sharpness(f, x, eps=1e-2, max_iters=3)
    assert res.fmax > res.f0
    assert res.final_f > res.f0  # the optimiser's own iterate went up, not just y = 0
    assert res.value > 0


def test_negated_objective_is_consistent_with_its_gradient():
    """(-f, -grad f) handed to L-BFGS-B: the gradient matches finite differences of the value."""
    f, _, x = quadratic([3.0, 1.0, 0.5, 0.2])
    obj = as_objective(f, x)
    search = BoxSearch(obj, x, None, np.full(4, 1.0))
    y = np.array([0.1, -0.2, 0.05, 0.3])
    val, grad = search.negated(y)
    h = 1e-6
    fd = np.array([(search.negated(y + h * e)[0] - search.negated(y - h * e)[0]) / (2 * h)
                   for e in np.eye(4)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    assert val == pytest.approx(-float(f(x + torch.from_numpy(y))), rel=1e-14)


def test_value_is_the_best_evaluated_point_inside_the_box():
    q, _, x = quadratic([3.0, -1.0, 0.5, -2.0, 0.1], seed=4)  # indefinite: a real search

    def f(z):
        return q(z) + 50.0  # Keskar's metric is for nonnegative losses

    rec = Recorder(f)
    eps = 0.05
    res = keskar_sharpness(rec, x, eps=eps, max_iters=10)
    assert res.fmax == max(rec.values)
    assert res.f0 == rec.values[0] == float(f(x))
    assert res.value >= 0
    w = eps * (x.abs() + 1)
    assert torch.equal(res.halfwidth, w)
    assert bool((res.y.abs() <= w).all())
    assert float(f(x + res.y)) == res.fmax
    assert res.num_evals - res.cache_hits == res.cost.num_grad == len(rec.values)


def test_never_negative_at_a_local_maximum():
    m = torch.linspace(-1, 1, 6, dtype=DTYPE)

    def f(z):
        return -((z - m) ** 2).sum()

    res = keskar_sharpness(f, m.clone(), eps=1e-2)  # zero gradient at a maximum
    assert res.value == 0.0
    assert res.fmax == res.f0


@pytest.mark.parametrize("driver", DRIVERS)
def test_identity_subspace_equals_full_space(driver):
    f, _, x = quadratic([3.0, -1.0, 0.5, -2.0, 0.1], seed=5)
    full = keskar_sharpness(f, x, eps=1e-2, driver=driver)
    sub = keskar_sharpness(f, x, eps=1e-2, A=torch.eye(5, dtype=DTYPE), driver=driver)
    assert sub.value == pytest.approx(full.value, rel=1e-12)
    assert torch.allclose(sub.halfwidth, full.halfwidth, rtol=1e-15, atol=0)
    assert full.settings["space"] == "full" and sub.settings["space"] == "subspace"


@pytest.mark.parametrize("distribution", ["uniform", "gaussian", "uniform-raw"])
def test_subspace_box_uses_pseudo_inverse_coordinates(distribution):
    f, _, x = quadratic([4.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01], seed=6)
    eps = 1e-2
    res = keskar_sharpness(f, x, eps=eps, p=3, seed=11, distribution=distribution)
    a = random_subspace(8, 3, seed=11, distribution=distribution, dtype=DTYPE)
    c_ref = np.linalg.pinv(a.numpy()) @ x.numpy()
    np.testing.assert_allclose(res.halfwidth.numpy(), eps * (np.abs(c_ref) + 1), rtol=1e-12)
    assert bool((res.y.abs() <= res.halfwidth).all())
    assert float(f(x + a @ res.y)) == pytest.approx(res.fmax, rel=1e-14)
    assert res.f0 == float(f(x))
    assert res.settings["subspace"] == distribution and res.settings["p"] == 3
    assert res.settings["subspace_seed"] == 11


def test_subspace_coordinates_match_pinv_on_ill_conditioned_uniform_matrix():
    a = random_subspace(2000, 40, seed=0)  # uniform: cond ~ sqrt(3p)
    x = torch.randn(2000, generator=torch.Generator().manual_seed(1))
    c = subspace_coordinates(a, x, block_rows=300)
    ref = np.linalg.pinv(a.double().numpy()) @ x.double().numpy()
    np.testing.assert_allclose(c.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_random_subspace_columns_and_determinism():
    a = random_subspace(500, 7, seed=3)
    assert a.shape == (500, 7) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=0), torch.ones(7), atol=1e-6)
    assert bool((a >= 0).all())  # uniform entries
    assert torch.equal(a, random_subspace(500, 7, seed=3))
    assert not torch.equal(a, random_subspace(500, 7, seed=4))
    gauss = random_subspace(500, 7, seed=3, distribution="gaussian", dtype=DTYPE)
    assert bool((gauss < 0).any())
    assert torch.allclose(gauss.norm(dim=0), torch.ones(7, dtype=DTYPE), atol=1e-12)
    raw = random_subspace(500, 7, seed=3, distribution="uniform-raw")
    assert torch.allclose(raw / raw.norm(dim=0), a, atol=1e-6)  # same draw, not normalised
    assert float(raw.norm(dim=0).mean()) == pytest.approx((500 / 3) ** 0.5, rel=0.1)


def test_drivers_give_identical_iterates():
    f, _, x = quadratic([3.0, -1.0, 0.5, -2.0, 0.1, 1.5], seed=8)

    def g(z):
        return f(z) + torch.sin(3 * z).sum()

    a = keskar_sharpness(g, x, eps=0.1, driver="setulb")
    b = keskar_sharpness(g, x, eps=0.1, driver="scipy")
    assert a.value == b.value
    assert torch.equal(a.y, b.y)
    assert (a.num_iters, a.cost.num_grad, a.message) == (b.num_iters, b.cost.num_grad, b.message)


def test_cache_avoids_recomputation_and_iterations_are_bounded():
    f, _, x = quadratic([3.0, 1.0, 0.5, 0.2, 0.1], seed=9)
    res = keskar_sharpness(f, x, eps=1e-2, max_iters=10)
    assert res.cache_hits >= 1  # y = 0 is evaluated once for f0 and reused by L-BFGS-B
    assert res.cost.num_grad == res.num_evals - res.cache_hits
    assert res.num_iters <= 10
    assert res.cost.num_loss == 0


@pytest.mark.parametrize("name", ["bn-batch", "bn-eval"])
def test_network_sharpness_records_bn_and_leaves_model_untouched(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    obj = case.objective()
    x = obj.base_point()
    res = keskar_sharpness(obj, x, eps=1e-3)
    assert_untouched(case.model, before)
    assert res.settings["bn_mode"] == case.bn_mode
    assert res.settings["num_samples"] == 64 and res.settings["chunk_size"] == 32
    assert res.value > 0
    assert float(obj.loss(x + res.y)) == pytest.approx(res.fmax, rel=1e-12)
    sub = keskar_sharpness(obj, x, eps=1e-3, p=5, seed=0)
    assert_untouched(case.model, before)
    assert 0 <= sub.value < res.value
    json.dumps(res.to_dict())


def test_float32_network_point_is_set_absolutely():
    case = mlp_case("bn-batch")
    model = copy.deepcopy(case.model).float()
    obj = ModelObjective(model, case.inputs.float(), case.targets, bn_mode="batch",
                         chunk_size=32)
    x = obj.base_point()
    before = state_snapshot(model)
    res = keskar_sharpness(obj, x, eps=1e-3)
    assert_untouched(model, before)
    assert res.settings["dtype"] == "torch.float32"
    assert float(obj.loss(x + res.y.float())) == pytest.approx(res.fmax, rel=1e-6)


def test_to_dict_is_json_and_omits_vectors():
    f, _, x = quadratic([1.0, 2.0])
    d = keskar_sharpness(f, x).to_dict()
    text = json.dumps(d)
    assert d["kind"] == "sharpness" and "y" not in d and "halfwidth" not in d
    assert d["y_norm"] >= 0 and "eps" in text


@pytest.mark.parametrize("method", ["lbfgsb", "pga"])
def test_multistart_finds_the_max_where_lbfgsb_cannot_move(method):
    # At the minimum of a convex quadratic the gradient is exactly zero: L-BFGS-B from
    # y = 0 stops at once (baseline 0); random starts reach corners.
    lam = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=DTYPE)
    m = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=DTYPE)

    def f(z):
        return 0.5 * (lam * (z - m) ** 2).sum()

    eps = 1e-2
    res = keskar_sharpness_multistart(f, m.clone(), eps=eps, method=method, num_starts=3,
                                      seed=0)
    w = eps * (m.abs() + 1)
    exact = metric(0.5 * float((lam * w**2).sum()), 0.0)
    assert res.baseline == 0.0 and res.start_values[0] == 0.0
    assert res.value == pytest.approx(exact, rel=1e-6)
    assert res.improvement == pytest.approx(res.value)
    assert bool((res.y.abs() <= res.halfwidth).all())
    assert res.settings["multistart"] == method and len(res.start_values) == 3


def test_multistart_never_below_baseline_and_baseline_is_standard_metric():
    q, _, x = quadratic([3.0, -1.0, 0.5, -2.0, 0.1], seed=4)

    def f(z):
        return q(z) + 50.0

    single = keskar_sharpness(f, x, eps=0.05)
    multi = keskar_sharpness_multistart(f, x, eps=0.05, num_starts=4, seed=1)
    assert multi.baseline == single.value
    assert multi.value >= multi.baseline
    assert multi.value == pytest.approx(max(multi.start_values))


def test_halfwidth_helper():
    x = torch.tensor([1.0, -2.0, 0.0], dtype=DTYPE)
    np.testing.assert_array_equal(keskar_halfwidth(x, 0.1, None), 0.1 * np.array([2, 3, 1.0]))


# --- every raise ---------------------------------------------------------------------


def _f(z):
    return (z**2).sum()


X = torch.ones(6, dtype=DTYPE)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "eps must be a positive"),
        ({"eps": float("nan")}, "eps must be a positive"),
        ({"max_iters": 0}, "max_iters must be a positive"),
        ({"A": torch.ones(5, 2, dtype=DTYPE)}, "A must have shape"),
        ({"A": torch.eye(6, dtype=DTYPE), "p": 2}, "not both"),
        ({"p": 2}, "needs a seed"),
        ({"p": 2, "seed": 0, "distribution": "cauchy"}, "unknown subspace distribution"),
        ({"p": 7, "seed": 0}, "subspace dimension p"),
        ({"A": torch.ones(6, 2, dtype=DTYPE)}, "rank deficient"),
        ({"driver": "fortran"}, "unknown L-BFGS-B driver"),
    ],
)
def test_keskar_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        keskar_sharpness(_f, X, **kwargs)


def test_raises_when_normalisation_is_not_positive():
    with pytest.raises(ConfigError, match="1 \\+ f\\(x\\) must be positive"):
        keskar_sharpness(lambda z: (z**2).sum() - 10.0, X)
    with pytest.raises(ConfigError, match="1 \\+ f\\(x\\) must be positive"):
        keskar_sharpness_multistart(lambda z: (z**2).sum() - 10.0, X)


def test_raises_when_loss_is_not_finite_in_the_box():
    def f(z):
        return torch.where(z.abs().max() > 1.001, torch.tensor(float("nan"), dtype=DTYPE),
                           (z**2).sum())

    with pytest.raises(ConfigError, match="not finite"):
        keskar_sharpness(f, X, eps=0.1)


def test_setulb_driver_unavailable_raises(monkeypatch):
    monkeypatch.setattr(box_search, "setulb_available", lambda: False)
    with pytest.raises(ConfigError, match="needs scipy >= 1.15"):
        keskar_sharpness(_f, X, driver="setulb")
    assert keskar_sharpness(_f, X, driver="auto").settings["driver"] == "scipy"


def test_subspace_coordinates_shape_raises():
    with pytest.raises(ConfigError, match="A must be an"):
        subspace_coordinates(torch.ones(3, 5), torch.ones(3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "anneal"}, "unknown multistart method"),
        ({"num_starts": 0}, "num_starts must be"),
        ({"method": "pga", "pga_steps": 0}, "pga_steps must be"),
        ({"method": "pga", "pga_step": -1.0}, "pga_steps must be"),
    ],
)
def test_multistart_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        keskar_sharpness_multistart(_f, X, **kwargs)


def test_metric_is_scale_of_the_box_in_percent():
    # sanity: value = 100 (fmax - f0) / (1 + f0), f0 from the first evaluation
    f, x, box_max = separable_convex(4, seed=2)
    res = keskar_sharpness(f, x, eps=1e-2, max_iters=50)
    assert res.value == pytest.approx(metric(res.fmax, res.f0), rel=1e-15)
    assert res.relative_increase == pytest.approx(res.value, rel=1e-15)
    assert math.isfinite(res.cost.seconds) and res.objective_seconds <= res.cost.seconds


def test_points_rounding_to_the_same_float32_vector_are_not_recomputed():
    x = torch.ones(4, dtype=torch.float32)
    obj = as_objective(lambda z: (z.double() ** 2).sum().float(), x)
    search = BoxSearch(obj, x, None, np.full(4, 0.5))
    y = np.array([0.1, 0.2, -0.1, 0.0])
    f1, g1 = search.value_and_grad(y)
    f2, g2 = search.value_and_grad(y + 1e-12)  # below float32 resolution of x + y
    assert obj.counters.num_grad == 1 and search.cache_hits == 1
    assert f1 == f2 and g1 is g2
    # the point is fl(x + y) with one rounding
    assert torch.equal(search.point(y), (x.double() + torch.from_numpy(y)).float())
