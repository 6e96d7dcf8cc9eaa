"""Top eigenvalues: Lanczos, ARPACK and power iteration against dense eigendecompositions."""

from __future__ import annotations

import json

import pytest
import torch
from cases import MLP_CASES, assert_untouched, known_spectrum, mlp_case, quadratic, state_snapshot

from sharpminima.errors import ConfigError
from sharpminima.landscape.eigen import (
    EigenResult,
    arpack,
    hessian_eigenvalues,
    lanczos,
    power_iteration,
    top_eigenvalues,
)
from sharpminima.landscape.operators import GGNOperator, HessianOperator


def rel_err(values, reference) -> float:
    values = torch.as_tensor(values, dtype=torch.float64)
    return float(((values - reference).abs() / reference.abs()).max())


SPECTRUM = [10.0, 7.0, 5.0, 4.0, 3.5, 2.0, 1.0, 0.5, 0.0, -1.0, -3.0] + [0.1 * i for i in range(20)]


@pytest.mark.parametrize("solver", [lanczos, arpack, power_iteration])
def test_known_spectrum(solver):
    a = known_spectrum(SPECTRUM)
    result = solver(a, 5, tol=1e-8, return_vectors=True)
    assert isinstance(result, EigenResult) and result.converged
    assert result.values == pytest.approx([10.0, 7.0, 5.0, 4.0, 3.5], rel=1e-10)
    assert result.value == result.values[0]
    vectors = result.vectors
    assert vectors.shape == (a.shape[0], 5)
    lam = torch.tensor(result.values, dtype=torch.float64)
    torch.testing.assert_close(a @ vectors, vectors * lam, atol=1e-6, rtol=0)
    assert result.cost.num_hvp == 0 and result.num_matvecs > 0 and result.seed == 0
    assert result.settings["operator"] == "dense" and result.settings["k"] == 5


def test_diagonal_matrix_with_known_spectrum():
    a = torch.diag(torch.linspace(-2.0, 3.0, 60, dtype=torch.float64))
    for solver in (lanczos, arpack, power_iteration):
        result = solver(a, 2, tol=1e-9)
        assert result.values == pytest.approx([3.0, 3.0 - 5.0 / 59], rel=1e-9), solver


def test_power_iteration_finds_the_algebraic_top_under_a_dominant_negative_eigenvalue():
    a = known_spectrum([-9.0, 4.0, 3.0, 1.0, -2.0, 0.5])
    result = power_iteration(a, 2, tol=1e-9)
    assert result.values == pytest.approx([4.0, 3.0], rel=1e-8)
    # All eigenvalues negative: the top is the one closest to zero.
    result = power_iteration(known_spectrum([-5.0, -1.0, -3.0, -4.0]), 2, tol=1e-9)
    assert result.values == pytest.approx([-1.0, -3.0], rel=1e-8)


def test_lanczos_finds_a_repeated_top_eigenvalue_after_breakdown():
    # Three distinct eigenvalues: the first Krylov space is invariant after 3 steps and
    # holds one copy of 5; the restart must find the second.
    a = known_spectrum([5.0, 5.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    result = lanczos(a, 3, tol=1e-10)
    assert result.converged
    assert result.values == pytest.approx([5.0, 5.0, 3.0], rel=1e-10)


def test_lanczos_on_the_whole_space_is_exact():
    a = known_spectrum([2.0, -1.0, 0.5])
    result = lanczos(a, 3, tol=1e-12)
    assert result.converged and result.num_matvecs <= 3
    assert result.values == pytest.approx([2.0, 0.5, -1.0], rel=1e-12)


def test_lanczos_reports_no_convergence():
    a = known_spectrum([1.0 + 0.01 * i for i in range(50)])
    result = lanczos(a, 1, tol=1e-12, max_iters=3)
    assert not result.converged and result.num_matvecs == 3
    assert result.residuals[0] > 1e-12 * result.value


def test_arpack_reports_no_convergence():
    a = known_spectrum([1.0 + 0.001 * i for i in range(200)])
    result = arpack(a, 1, tol=1e-14, max_iters=1, ncv=3)
    assert not result.converged


def test_power_iteration_reports_no_convergence():
    a = known_spectrum([1.0, 0.999, 0.5])
    result = power_iteration(a, 1, tol=1e-12, max_iters=5)
    assert not result.converged and result.num_matvecs == 5


@pytest.mark.parametrize("name", MLP_CASES)
def test_top5_of_mlp_hessians_by_lanczos_and_arpack(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    reference = case.eigenvalues[:5]
    obj = case.objective()
    result = hessian_eigenvalues(obj, case.x0, 5, tol=1e-6)
    assert result.converged and rel_err(result.values, reference) < 1e-4
    assert result.cost.num_hvp == result.num_matvecs == obj.counters.num_hvp
    assert result.settings["bn_mode"] == case.bn_mode and result.settings["method"] == "lanczos"
    assert result.settings["num_samples"] == 64 and result.settings["chunk_size"] == 32
    reference_path = hessian_eigenvalues(obj, case.x0, 5, method="arpack", tol=1e-6)
    assert reference_path.converged
    assert reference_path.values == pytest.approx(result.values, rel=1e-6)
    assert_untouched(case.model, before)


def test_top5_of_an_mlp_hessian_by_power_iteration():
    # Power iteration needs hundreds of products per eigenvalue here (gaps of a few percent),
    # so top-5 runs on the dense Hessian; the HVP path is checked for the top 2 below.
    case = mlp_case("bn-batch")
    result = power_iteration(case.hessian, 5, tol=1e-6, max_iters=5000)
    assert result.converged and rel_err(result.values, case.eigenvalues[:5]) < 1e-4


@pytest.mark.parametrize("name", ["plain", "bn-eval"])
def test_power_iteration_through_hvps(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    result = hessian_eigenvalues(case.objective(), case.x0, 2, method="power", tol=1e-5)
    assert result.converged and rel_err(result.values, case.eigenvalues[:2]) < 1e-4
    assert result.method == "power"
    assert_untouched(case.model, before)


def test_lanczos_needs_fewer_products_than_power_iteration():
    case = mlp_case("plain")
    op = HessianOperator(case.objective(), case.x0)
    fast = top_eigenvalues(op, 1, method="lanczos", tol=1e-4)
    slow = top_eigenvalues(op, 1, method="power", tol=1e-4)
    assert fast.value == pytest.approx(slow.value, rel=1e-4)
    assert fast.num_matvecs < slow.num_matvecs
    # One history entry per product; Lanczos' top Ritz value rises monotonically to lambda_1.
    assert len(fast.history) == fast.num_matvecs and len(slow.history) == slow.num_matvecs
    assert all(b >= a - 1e-12 for a, b in zip(fast.history, fast.history[1:], strict=False))
    assert fast.history[-1] == fast.value and slow.history[-1] == slow.value
    assert top_eigenvalues(op, 1, method="arpack").history == ()


def test_eigenvalues_of_the_ggn_operator():
    case = mlp_case("bn-batch")
    obj = case.objective()
    ggn = GGNOperator(obj, case.x0)
    dense = ggn @ torch.eye(ggn.shape[0], dtype=torch.float64)
    reference = torch.linalg.eigvalsh((dense + dense.T) / 2).flip(0)[:3]
    result = hessian_eigenvalues(obj, case.x0, 3, tol=1e-7, operator=ggn)
    assert rel_err(result.values, reference) < 1e-6
    assert result.settings["operator"] == "ggn" and result.cost.num_hvp == 0


def test_quadratic_callable_and_seed_independence():
    f, a, x0 = quadratic(SPECTRUM)
    values = [hessian_eigenvalues(f, x0, 3, tol=1e-9, seed=s).values for s in range(3)]
    for v in values:
        assert v == pytest.approx([10.0, 7.0, 5.0], rel=1e-9)


def test_result_is_frozen_and_serialisable():
    result = lanczos(known_spectrum([3.0, 2.0, 1.0, 0.0]), 2, return_vectors=True)
    with pytest.raises(AttributeError):
        result.value = 0.0  # type: ignore[misc]
    out = result.to_dict()
    assert "vectors" not in out and out["kind"] == "eigen" and out["values"] == list(result.values)
    json.dumps(out)
    assert "vectors" not in lanczos(torch.eye(3, dtype=torch.float64)).to_dict()


# -- errors ---------------------------------------------------------------------------------


def test_errors():
    a = torch.eye(4, dtype=torch.float64)
    for solver in (lanczos, arpack, power_iteration):
        with pytest.raises(ConfigError, match=r"k must be an integer in \[1, 4\]"):
            solver(a, 0)
        with pytest.raises(ConfigError, match="tol must be positive"):
            solver(a, 1, tol=0.0)
    with pytest.raises(ConfigError, match=r"k must be an integer in \[1, 4\]"):
        lanczos(a, 5)
    with pytest.raises(ConfigError, match=r"max_iters \(1\) must be at least k \(2\)"):
        lanczos(a, 2, max_iters=1)
    with pytest.raises(ConfigError, match="ARPACK needs k < n"):
        arpack(a, 4)
    with pytest.raises(ConfigError, match="max_iters must be at least 1"):
        power_iteration(a, 1, max_iters=0)
    f, _, x0 = quadratic([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ConfigError, match="unknown eigenvalue method 'qr'"):
        hessian_eigenvalues(f, x0, method="qr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown eigenvalue method 'qr'"):
        top_eigenvalues(a, method="qr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="does not match the parameter vector"):
        hessian_eigenvalues(f, x0, operator=torch.eye(3, dtype=torch.float64))


def test_a_float32_operator_gets_its_tolerance_not_float32_bookkeeping_error():
    # Long float32 vectors: with float32 Lanczos vectors the top eigenvalue of this
    # diagonal operator came out 1.6e-5 high whatever the tolerance; the vectors and
    # scalars are float64 now, and only the float32 products limit the accuracy.
    from sharpminima.landscape.operators import Operator

    class Diagonal(Operator):
        def __init__(self, d: torch.Tensor) -> None:
            super().__init__()
            self.d, n = d, d.numel()
            self.shape, self.dtype, self.device = (n, n), d.dtype, d.device

        def _matvec(self, v: torch.Tensor) -> torch.Tensor:
            return self.d * v

    d = torch.rand(600_000, generator=torch.Generator().manual_seed(0)) * 5
    d[:3] = torch.tensor([10.0, 9.0, 8.5])
    result = lanczos(Diagonal(d), k=1, tol=1e-6)
    assert result.converged
    assert abs(result.value - 10.0) / 10.0 <= 1e-6
