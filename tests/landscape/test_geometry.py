import json
import math

import numpy as np
import pytest
import torch
from cases import (
    DTYPE,
    assert_untouched,
    known_spectrum,
    linear_regression,
    mlp_case,
    separable_convex,
    state_snapshot,
)

from sharpminima.errors import ConfigError
from sharpminima.landscape.flatness import adaptive_sharpness, average_sharpness
from sharpminima.landscape.noise import gradient_noise_scale
from sharpminima.landscape.norms import distance_ratio, parameter_distance, weight_norms
from sharpminima.landscape.objective import ModelObjective
from sharpminima.landscape.sharpness import keskar_sharpness

# --- average sharpness ---------------------------------------------------------------


def _quadratic_with_gradient(n=10, seed=0):
    h = known_spectrum(torch.linspace(0.1, 3.0, n), seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    m = torch.randn(n, generator=g, dtype=DTYPE)
    x = m + torch.randn(n, generator=g, dtype=DTYPE)  # non-zero gradient at x

    def f(z):
        d = z - m
        return 0.5 * d @ (h @ d) + 1.0

    return f, h, x


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize(("scale", "eta"), [("keskar", 0.0), ("adaptive", 0.1), ("absolute", 0.0)])
def test_average_sharpness_matches_known_mean(scale, eta, antithetic):
    f, h, x = _quadratic_with_gradient()
    sigma = 0.05
    res = average_sharpness(f, x, sigma=sigma, scale=scale, eta=eta, num_draws=400,
                            antithetic=antithetic, seed=1)
    s = {"keskar": x.abs() + 1, "adaptive": x.abs() + eta, "absolute": torch.ones_like(x)}[scale]
    truth = 0.5 * sigma**2 * float((torch.diagonal(h) * s**2).sum())  # tr(H S^2) / 2
    assert abs(res.value - truth) < 3 * res.stderr
    assert res.stderr > 0
    assert res.f0 == float(f(x))
    assert res.relative == pytest.approx(100 * res.value / (1 + res.f0))
    assert res.cost.num_loss == 1 + 400 * (2 if antithetic else 1)
    assert len(res.terms) == 400


def test_antithetic_cancels_the_gradient_term():
    # For a linear function the antithetic estimate is exactly zero.
    g = torch.arange(1.0, 6.0, dtype=DTYPE)

    def f(z):
        return g @ z

    res = average_sharpness(f, torch.ones(5, dtype=DTYPE), sigma=0.1, num_draws=8)
    assert abs(res.value) < 1e-14 and res.stderr < 1e-14


# --- adaptive sharpness --------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.3])
def test_adaptive_sharpness_matches_closed_form(eta):
    f, x, box_max = separable_convex()
    eps = 1e-2
    res = adaptive_sharpness(f, x, eps=eps, eta=eta, max_iters=100)
    w = eps * (x.abs() + eta)
    assert res.value == pytest.approx(box_max(w) - float(f(x)), rel=1e-6)
    assert torch.allclose(res.halfwidth, w, rtol=1e-15, atol=0)
    assert bool((res.y.abs() <= w).all())
    assert res.settings["metric"] == "adaptive"


def test_adaptive_with_eta_one_is_keskar_box():
    f, x, _ = separable_convex(8, seed=3)
    a = adaptive_sharpness(f, x, eps=1e-3, eta=1.0)
    k = keskar_sharpness(f, x, eps=1e-3)
    assert a.relative_increase == pytest.approx(k.value, rel=1e-12)
    assert a.value == pytest.approx(k.fmax - k.f0, rel=1e-12)


def test_adaptive_zero_parameters_are_not_perturbed():
    x = torch.tensor([0.0, 1.0, -2.0], dtype=DTYPE)
    res = adaptive_sharpness(lambda z: (z**2).sum() + z[0] * 5, x, eps=0.1)
    assert res.y[0] == 0.0
    assert res.value == pytest.approx(float((x.abs() * 1.1) @ (x.abs() * 1.1) - x @ x), rel=1e-9)


# --- gradient noise scale ------------------------------------------------------------


def _regression_objective(num, seed=0, noise=1.0, shift=1.0):
    model, inputs, targets, loss_fn, b_true = linear_regression(num, noise=noise, shift=shift,
                                                                seed=seed)
    obj = ModelObjective(model, inputs, targets, bn_mode="eval", chunk_size=4096,
                         loss_fn=loss_fn)
    return obj, b_true


def test_per_example_noise_scale_algebra_against_a_loop():
    case = mlp_case("bn-eval")
    obj = case.objective()
    x = obj.base_point()
    before = state_snapshot(case.model)
    res = gradient_noise_scale(obj, x, method="per_example", num_groups=4, chunk_size=7)
    assert_untouched(case.model, before)
    # reference: per-example gradients one at a time
    grads = []
    for i in range(obj.num_samples):
        one = ModelObjective(case.model, case.inputs[i : i + 1], case.targets[i : i + 1],
                             bn_mode="eval")
        grads.append(one.loss_and_grad(x)[1])
    g = torch.stack(grads)  # (N, n)
    m = g.shape[0]
    mean = g.mean(0)
    trace = float(((g - mean) ** 2).sum() / (m - 1))
    assert res.trace_cov == pytest.approx(trace, rel=1e-9)
    assert res.grad_norm_sq == pytest.approx(float(mean @ mean) - trace / m, rel=1e-9)
    assert res.value == pytest.approx(res.trace_cov / res.grad_norm_sq, rel=1e-12)
    assert res.num_examples == 64 and res.data_passes == 1.0
    json.dumps(res.to_dict())


@pytest.mark.parametrize("method", ["per_example", "two_batch"])
def test_noise_scale_matches_linear_regression_truth(method):
    obj, b_true = _regression_objective(20000)
    before = state_snapshot(obj.model)
    kwargs = ({"num_groups": 20} if method == "per_example"
              else {"batch_small": 16, "batch_big": 512, "num_repeats": 400})
    res = gradient_noise_scale(obj, method=method, seed=3, **kwargs)
    assert_untouched(obj.model, before)
    assert abs(res.value - b_true) < 4 * res.stderr
    assert res.stderr < 0.2 * b_true  # the estimate is informative
    assert res.method == method


def test_noise_scale_standard_error_is_calibrated():
    # Across independent datasets the spread of the estimates matches the reported errors.
    values, errors = [], []
    for seed in range(12):
        obj, b_true = _regression_objective(3000, seed=seed)
        res = gradient_noise_scale(obj, method="per_example", num_groups=10, seed=seed)
        values.append(res.value)
        errors.append(res.stderr)
    spread = float(np.std(values, ddof=1))
    assert 0.5 < spread / float(np.mean(errors)) < 2.0
    assert abs(np.mean(values) - b_true) < 3 * spread / math.sqrt(len(values)) + 0.1 * b_true


def test_two_batch_on_batchnorm_model_is_allowed_and_untouched():
    case = mlp_case("bn-batch")
    before = state_snapshot(case.model)
    res = gradient_noise_scale(case.objective(), method="two_batch", batch_small=8,
                               batch_big=32, num_repeats=4)
    assert_untouched(case.model, before)
    assert math.isfinite(res.value) and res.settings["bn_mode"] == "batch"
    assert res.cost.num_grad == 8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "magic"}, "unknown noise-scale method"),
        ({"num_groups": 1}, "num_groups"),
        ({"num_examples": 10**6}, "num_groups"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"method": "two_batch", "batch_small": 64, "batch_big": 64}, "batch_small < batch_big"),
        ({"method": "two_batch", "num_repeats": 1}, "num_repeats must be"),
    ],
)
def test_noise_scale_raises(kwargs, match):
    obj, _ = _regression_objective(100)
    with pytest.raises(ConfigError, match=match):
        gradient_noise_scale(obj, **kwargs)


def test_noise_scale_raises_for_batch_statistics_and_plain_callables():
    with pytest.raises(ConfigError, match="need running statistics"):
        gradient_noise_scale(mlp_case("bn-batch").objective(), method="per_example")
    with pytest.raises(ConfigError, match="needs a network objective"):
        gradient_noise_scale(lambda z: z.sum(), torch.ones(3))  # type: ignore[arg-type]


# --- measures on a BatchNorm model leave it untouched ----------------------------------


@pytest.mark.parametrize("name", ["bn-batch", "bn-eval"])
def test_average_and_adaptive_leave_bn_model_untouched(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    obj = case.objective()
    x = obj.base_point()
    avg = average_sharpness(obj, x, sigma=1e-2, num_draws=4)
    ada = adaptive_sharpness(obj, x, eps=1e-2)
    assert_untouched(case.model, before)
    assert ada.value > 0 and math.isfinite(avg.value)
    assert avg.settings["bn_mode"] == ada.settings["bn_mode"] == case.bn_mode


# --- distances and norms -------------------------------------------------------------


def test_distances_and_norms_per_layer():
    case = mlp_case("bn-eval")
    obj = case.objective()
    x0 = obj.base_point()
    g = torch.Generator().manual_seed(0)
    xa = x0 + torch.randn(x0.shape, generator=g, dtype=DTYPE)
    xb = x0 + 0.25 * torch.randn(x0.shape, generator=g, dtype=DTYPE)
    d = parameter_distance(xa, x0, obj)
    assert d.value == pytest.approx(float(np.linalg.norm((xa - x0).numpy())), rel=1e-14)
    assert d.relative == pytest.approx(d.value / float(x0.norm()), rel=1e-14)
    assert list(d.per_layer) == obj.names
    assert sum(v**2 for v in d.per_layer.values()) == pytest.approx(d.value**2, rel=1e-12)
    assert parameter_distance(xa, x0, case.model).per_layer == d.per_layer
    r = distance_ratio(xa, xb, x0)
    assert r.value == pytest.approx(r.distance_a / r.distance_b) and r.value > 1
    w = weight_norms(x0, list(zip(obj.names, obj.numels, strict=True)))
    assert w.value == pytest.approx(float(x0.norm()), rel=1e-14)
    first = obj.names[0]
    assert w.per_layer[first] == pytest.approx(float(obj.unflatten(x0)[first].norm()), rel=1e-14)
    assert weight_norms(x0).per_layer == {}
    json.dumps(d.to_dict())


def test_distance_raises():
    with pytest.raises(ConfigError, match="equal length"):
        parameter_distance(torch.ones(3), torch.ones(4))
    with pytest.raises(ConfigError, match="equal length"):
        distance_ratio(torch.ones(3), torch.ones(3), torch.ones((3, 1)))
    with pytest.raises(ConfigError, match="layout covers"):
        weight_norms(torch.ones(3), [("a", 2)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "sigma must be"),
        ({"scale": "huge"}, "unknown perturbation scale"),
        ({"eta": -1.0}, "eta must be nonnegative"),
        ({"num_draws": 1}, "num_draws must be"),
    ],
)
def test_average_sharpness_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        average_sharpness(lambda z: (z**2).sum(), torch.ones(3, dtype=DTYPE), **kwargs)


def test_adaptive_sharpness_raises():
    with pytest.raises(ConfigError, match="eta must be nonnegative"):
        adaptive_sharpness(lambda z: (z**2).sum(), torch.ones(3, dtype=DTYPE), eta=-0.1)
    with pytest.raises(ConfigError, match="eps must be a positive"):
        adaptive_sharpness(lambda z: (z**2).sum(), torch.ones(3, dtype=DTYPE), eps=-1.0)
