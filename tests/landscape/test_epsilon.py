import json
import sys

import numpy as np
import pytest
import torch
from cases import DTYPE, mlp_case, quadratic

from sharpminima.errors import ConfigError
from sharpminima.landscape.epsilon import epsilon_study, plot_epsilon_study
from sharpminima.landscape.subspace import random_subspace

EPS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]




def _isotropic(n=8, lam=3.0, offset=1e-10, seed=0):
    """``lam/2 ||x - m||^2`` at (a hair from) its minimum: zero-gradient regime."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, generator=g, dtype=DTYPE)
    x = m + offset * torch.where(torch.rand(n, generator=g, dtype=DTYPE) < 0.5, -1.0, 1.0)

    def f(z):
        return 0.5 * lam * ((z - m) ** 2).sum()

    return f, x, m, lam


def test_zero_gradient_regime_scales_like_eps_squared_and_meets_the_bound():
    f, x, m, lam = _isotropic()
    res = epsilon_study(f, x, EPS, lambda_max=lam)
    s = x.abs() + 1
    f0 = float(f(x))
    for eps, value, quad, bound in zip(EPS, res.sharpness, res.quadratic_term, res.bound,
                                       strict=True):
        exact = 0.5 * lam * float((((x - m).abs() + eps * s) ** 2).sum())
        assert value == pytest.approx(100 * (exact - f0) / (1 + f0), rel=1e-6)
        # H = lam I: the corner attains 50 eps^2 lam ||s||^2 / (1 + f0)
        assert quad == pytest.approx(50 * eps**2 * lam * float(s @ s) / (1 + f0), rel=1e-12)
        assert value == pytest.approx(quad, rel=1e-5)
        assert value <= bound * (1 + 1e-12)
    assert res.value == pytest.approx(2.0, abs=1e-3)  # log-log slope
    ratios = np.array(res.sharpness) / np.array(EPS) ** 2
    assert np.ptp(ratios) / ratios.mean() < 1e-5


def test_linear_term_is_exact_for_a_linear_function():
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(10, generator=g, dtype=DTYPE)
    x = torch.randn(10, generator=g, dtype=DTYPE)

    def f(z):
        return grad @ z + 5.0

    res = epsilon_study(f, x, EPS, lambda_max=0.0)
    f0 = float(f(x))
    for eps, value, lin in zip(EPS, res.sharpness, res.linear_term, strict=True):
        assert lin == pytest.approx(100 * eps * float((grad.abs() * (x.abs() + 1)).sum()) / (1 + f0),
                                    rel=1e-12)
        assert value == pytest.approx(lin, rel=1e-9)
    assert res.value == pytest.approx(1.0, abs=1e-9)
    assert res.quadratic_term == (0.0,) * len(EPS)


def test_gradient_regime_linear_term_dominates_small_eps_and_bound_holds():
    f, a, x = quadratic([5.0, 2.0, 1.0, 0.5, 0.1, 0.01])

    def shifted(z):
        return f(z) + 10.0  # nonnegative loss

    res = epsilon_study(shifted, x, [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], lambda_max=5.0)
    sharp, lin, bound = map(np.array, (res.sharpness, res.linear_term, res.bound))
    assert np.all(sharp <= bound * (1 + 1e-12))  # exact bound for a quadratic
    assert np.all(sharp >= lin * (1 - 1e-9))  # convex: the sign(g) corner is at least linear
    assert sharp[0] == pytest.approx(lin[0], rel=1e-3)  # small eps: the linear term
    assert res.quadratic_term[-1] / res.linear_term[-1] > res.quadratic_term[0] / res.linear_term[0]


def test_lambda_max_from_the_eigen_module_matches_dense_reference():
    f, a, x = quadratic([5.0, 2.0, 1.0, -0.5, 0.1], seed=3)

    def shifted(z):
        return f(z) + 10.0

    res = epsilon_study(shifted, x, [1e-3])
    dense = torch.autograd.functional.hessian(shifted, x)
    assert res.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-6)
    assert res.settings["lambda_source"] == "lanczos"
    assert res.cost.num_hvp > 0


def test_subspace_lambda_is_that_of_the_projected_hessian():
    f, a, x = quadratic([5.0, 2.0, 1.0, 0.5, 0.1, 0.05], seed=4)

    def shifted(z):
        return f(z) + 10.0

    res = epsilon_study(shifted, x, [1e-3, 1e-2], p=3, seed=7)
    amat = random_subspace(6, 3, seed=7, dtype=DTYPE)
    ref = float(torch.linalg.eigvalsh(amat.T @ a @ amat)[-1])
    assert res.lambda_max == pytest.approx(ref, rel=1e-6)
    assert res.settings["space"] == "subspace" and res.settings["p"] == 3
    assert all(r.settings["subspace"] == "given" for r in res.results)
    assert np.all(np.array(res.sharpness) <= np.array(res.bound) * (1 + 1e-12))


def test_network_study_and_dict():
    case = mlp_case("bn-batch")
    obj = case.objective()
    res = epsilon_study(obj, obj.base_point(), [1e-4, 1e-3], lambda_max=float(case.eigenvalues[0]))
    assert res.settings["bn_mode"] == "batch"
    assert all(v >= 0 for v in res.sharpness)
    d = res.to_dict()
    json.dumps(d)
    assert "results" not in d and len(d["sharpness"]) == 2


def test_plot_returns_a_figure():
    f, x, _, lam = _isotropic()
    fig = plot_epsilon_study(epsilon_study(f, x, EPS, lambda_max=lam))
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 4 and ax.get_xscale() == "log"


@pytest.mark.parametrize("eps", [[], [0.0, 1e-3], [float("inf")]])
def test_epsilon_study_raises_for_bad_eps(eps):
    with pytest.raises(ConfigError, match="eps_values must be positive"):
        epsilon_study(lambda z: (z**2).sum(), torch.ones(3, dtype=DTYPE), eps)


def test_epsilon_study_raises_without_eigen_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "sharpminima.landscape.eigen", None)
    with pytest.raises(ConfigError, match="pass lambda_max"):
        epsilon_study(lambda z: (z**2).sum(), torch.ones(3, dtype=DTYPE), [1e-3])
