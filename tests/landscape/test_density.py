"""Stochastic Lanczos quadrature against dense spectra."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cases import MLP_CASES, assert_untouched, known_spectrum, mlp_case, state_snapshot

from sharpminima.errors import ConfigError
from sharpminima.landscape.density import DensityResult, slq, spectral_density
from sharpminima.landscape.trace import hutchinson


def broadened(eigenvalues: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    z = (grid[None, :] - eigenvalues[:, None]) / sigma
    return (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))).mean(axis=0)


@pytest.mark.parametrize("name", MLP_CASES)
def test_slq_of_mlp_hessian(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    obj = case.objective()
    result = spectral_density(obj, case.x0, num_probes=8, lanczos_steps=40, seed=0)
    eig = case.eigenvalues.numpy()
    n = eig.size
    assert isinstance(result, DensityResult) and result.dim == n and result.num_probes == 8
    assert result.num_matvecs == 8 * 40 == result.cost.num_hvp
    assert result.settings["bn_mode"] == case.bn_mode
    for w in result.weights:
        assert min(w) >= 0 and sum(w) == pytest.approx(1.0, abs=1e-12)
    # The density integrates to 1 (trapezoid rule on a grid covering every node).
    sigma = 0.02
    grid = np.linspace(eig.min() - 10 * sigma, eig.max() + 10 * sigma, 4001)
    dens = result.density(grid, sigma)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
    # Trace: SLQ integrates f(t) = t exactly, within 3 standard errors of the dense trace.
    assert abs(result.value - eig.sum()) <= 3 * result.stderr
    # Fraction of eigenvalues above a threshold, away from the cluster near 0 (a step
    # function is integrated well only where the spectrum is sparse).
    for threshold in (-0.3, 0.3):
        frac, err = result.fraction_above(threshold)
        assert abs(frac - (eig > threshold).mean()) <= 3 * err + 0.02
    # The broadened density tracks the dense one: L1 distance small compared with 2.
    wide = 0.1
    l1 = np.trapezoid(np.abs(result.density(grid, wide) - broadened(eig, grid, wide)), grid)
    assert l1 < 0.2
    assert_untouched(case.model, before)


def test_slq_trace_equals_hutchinson_with_the_same_probes():
    h = mlp_case("plain").hessian
    density = slq(h, num_probes=6, lanczos_steps=20, seed=4)
    trace = hutchinson(h, num_probes=6, seed=4)
    per_probe = [density.dim * np.dot(w, t) for t, w in zip(density.nodes, density.weights, strict=True)]
    np.testing.assert_allclose(per_probe, trace.estimates, rtol=1e-9)
    assert density.value == pytest.approx(trace.value, rel=1e-9)


def test_tr_of_polynomials_is_exact_per_probe():
    # Gauss quadrature with m nodes integrates polynomials of degree <= 2m - 1 exactly.
    a = known_spectrum([3.0, 2.0, 1.0, -1.0, 0.5, 0.25, 2.5, -0.5])
    z_density = slq(a, num_probes=1, lanczos_steps=2, seed=0)
    moment, _ = z_density.expectation(lambda t: t**3)
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 2, (8,), generator=g, dtype=torch.float64) * 2 - 1
    v = z / math.sqrt(8)
    assert moment == pytest.approx(float(v @ a @ a @ a @ v), rel=1e-10)


def test_probe_with_invariant_krylov_space_stops_early_and_is_exact():
    a = torch.diag(torch.tensor([2.0, 2.0, 2.0, -1.0, -1.0, 5.0], dtype=torch.float64))
    result = slq(a, num_probes=3, lanczos_steps=6)
    assert all(len(nodes) == 3 for nodes in result.nodes)
    assert result.num_matvecs == 9
    # Rademacher probes see each eigenvalue with weight multiplicity / n.
    for nodes, weights in zip(result.nodes, result.weights, strict=True):
        assert nodes == pytest.approx((-1.0, 2.0, 5.0))
        assert weights == pytest.approx((2 / 6, 3 / 6, 1 / 6))
    assert result.value == pytest.approx(9.0) and result.stderr == pytest.approx(0.0, abs=1e-12)
    frac, err = result.fraction_above(0.0)
    assert frac == pytest.approx(4 / 6) and err == pytest.approx(0.0, abs=1e-12)


def test_density_error_bars_and_shapes():
    a = known_spectrum(np.linspace(-1, 4, 60).tolist())
    result = slq(a, num_probes=5, lanczos_steps=15, seed=1)
    grid = np.linspace(-2, 5, 50)
    spread = result.density_stderr(grid, 0.2)
    assert spread.shape == (50,) and np.all(spread >= 0) and spread.max() > 0
    assert result.density(grid.reshape(5, 10), 0.2).shape == (5, 10)
    single = slq(a, num_probes=1, lanczos_steps=15)
    assert math.isnan(single.stderr) and np.all(np.isnan(single.density_stderr(grid, 0.2)))
    assert math.isnan(single.fraction_above(0.0)[1])
    out = result.to_dict()
    assert out["kind"] == "density" and len(out["nodes"]) == 5
    json.dumps(out)


def test_errors():
    a = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ConfigError, match="num_probes and lanczos_steps must be positive"):
        slq(a, num_probes=0)
    with pytest.raises(ConfigError, match="num_probes and lanczos_steps must be positive"):
        slq(a, lanczos_steps=0)
    result = slq(a, num_probes=2, lanczos_steps=2)
    with pytest.raises(ConfigError, match="sigma must be positive"):
        result.density([0.0], 0.0)
    with pytest.raises(ConfigError, match="sigma must be positive"):
        result.density_stderr([0.0], -1.0)
