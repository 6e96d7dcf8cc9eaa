"""Subspace Ritz values and per-layer Hessian blocks against dense references."""

from __future__ import annotations

import pytest
import torch
from cases import MLP_CASES, assert_untouched, mlp_case, quadratic, state_snapshot

from sharpminima.errors import ConfigError
from sharpminima.landscape.curvature import (
    RitzResult,
    layer_eigenvalues,
    layer_traces,
    subspace_ritz_values,
)
from sharpminima.landscape.operators import GGNOperator, parameter_groups


@pytest.mark.parametrize("name", MLP_CASES)
def test_ritz_values_equal_dense_projection(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    h = case.hessian
    n = h.shape[0]
    g = torch.Generator().manual_seed(7)
    a = torch.rand(n, 12, generator=g, dtype=torch.float64)  # U[0,1) columns, as in Keskar
    a = a / a.norm(dim=0)
    result = subspace_ritz_values(case.objective(), case.x0, a)
    q, _ = torch.linalg.qr(a)
    reference = torch.linalg.eigvalsh(q.T @ h @ q).flip(0)
    assert isinstance(result, RitzResult) and result.subspace_dim == 12
    torch.testing.assert_close(torch.tensor(result.values, dtype=torch.float64), reference,
                               rtol=1e-9, atol=1e-12)
    assert result.value == result.values[0] <= float(case.eigenvalues[0]) + 1e-12  # interlacing
    assert result.num_matvecs == 12 == result.cost.num_hvp
    assert result.settings["bn_mode"] == case.bn_mode and result.seed is None
    assert_untouched(case.model, before)


def test_ritz_values_on_an_eigenvector_subspace_are_eigenvalues():
    f, a, x0 = quadratic([5.0, 3.0, 1.0, -2.0, 0.0])
    _, vectors = torch.linalg.eigh(a)
    basis = vectors[:, -2:] @ torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    result = subspace_ritz_values(f, x0, basis)
    assert result.values == pytest.approx([5.0, 3.0], rel=1e-12)


@pytest.mark.parametrize("name", ["plain", "bn-batch"])
def test_layer_eigenvalues_and_traces_match_dense_blocks(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    obj = case.objective()
    h = case.hessian
    groups = parameter_groups(obj)
    eigen = layer_eigenvalues(obj, case.x0, k=2, tol=1e-8)
    traces = layer_traces(obj, case.x0, num_probes=30)
    assert list(eigen) == list(groups) == list(traces)
    total = 0.0
    for group, idx in groups.items():
        block = h[idx][:, idx]
        reference = torch.linalg.eigvalsh(block).flip(0)[:2]
        assert eigen[group].values == pytest.approx(reference.tolist(), rel=1e-6, abs=1e-12)
        assert eigen[group].settings["block"] == group
        exact = float(torch.trace(block))
        assert abs(traces[group].value - exact) <= 3 * traces[group].stderr + 1e-12
        total += exact
    assert total == pytest.approx(float(torch.trace(h)))
    assert_untouched(case.model, before)


def test_layer_blocks_of_the_ggn_with_explicit_groups():
    case = mlp_case("plain")
    obj = case.objective()
    ggn = GGNOperator(obj, case.x0)
    groups = {"first": torch.arange(0, 84), "last": torch.arange(214, 258)}
    result = layer_eigenvalues(obj, case.x0, groups=groups, operator=ggn, tol=1e-8)
    dense = ggn @ torch.eye(258, dtype=torch.float64)
    for group, idx in groups.items():
        reference = float(torch.linalg.eigvalsh(dense[idx][:, idx])[-1])
        assert result[group].value == pytest.approx(reference, rel=1e-6)
        assert result[group].settings["operator"] == "block of ggn"


def test_layer_traces_of_a_plain_callable_with_groups():
    f, a, x0 = quadratic([4.0, 3.0, 2.0, 1.0])
    groups = {"a": torch.tensor([0, 1]), "b": torch.tensor([2, 3])}
    traces = layer_traces(f, x0, groups=groups, num_probes=200)
    for name, idx in groups.items():
        exact = float(torch.trace(a[idx][:, idx]))
        assert abs(traces[name].value - exact) <= 3 * traces[name].stderr + 1e-12


def test_errors():
    f, _, x0 = quadratic([1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match=r"must have shape \(n, p\) with n=3"):
        subspace_ritz_values(f, x0, torch.ones(4, 2, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"must have shape \(n, p\) with n=3"):
        subspace_ritz_values(f, x0, torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"must have shape \(n, p\) with n=3"):
        subspace_ritz_values(f, x0, torch.ones(3, dtype=torch.float64))
    dependent = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ConfigError, match="linearly dependent"):
        subspace_ritz_values(f, x0, dependent)
    with pytest.raises(ConfigError, match="parameter groups need a network objective"):
        layer_eigenvalues(f, x0)
    with pytest.raises(ConfigError, match="parameter groups need a network objective"):
        layer_traces(f, x0)
    with pytest.raises(ConfigError, match=r"k must be an integer in \[1, 1\]"):
        layer_eigenvalues(f, x0, k=2, groups={"one": torch.tensor([0])})
