"""Operators against dense float64 references: Hessian, GGN, blocks, scipy view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import (
    MLP_CASES,
    assert_untouched,
    known_spectrum,
    mlp_case,
    quadratic,
    state_snapshot,
    tiny_data,
    tiny_mlp,
)
from torch import nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import ModelObjective, bn_mode
from sharpminima.landscape.operators import (
    BlockOperator,
    DenseOperator,
    GGNOperator,
    HessianOperator,
    Operator,
    OperatorMeter,
    as_operator,
    parameter_groups,
    resolve_operator,
)


def _rand(n: int, *shape: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


def dense_ggn(case) -> torch.Tensor:
    """J^T H_out J built by hand: full Jacobians of each chunk's logits, per-sample H_out."""
    obj = case.objective()
    x0 = obj.base_point()
    n = x0.numel()
    total = torch.zeros(n, n, dtype=torch.float64)
    with bn_mode(case.model, case.bn_mode):
        for (xb, _), weight in obj.batches():

            def logits(p, xb=xb):
                return torch.func.functional_call(case.model, obj.unflatten(p), (xb,))

            z = logits(x0)  # (B, C)
            jac = torch.autograd.functional.jacobian(logits, x0)  # (B, C, n)
            p = torch.softmax(z, dim=1)
            for i in range(xb.shape[0]):
                h_out = (torch.diag(p[i]) - torch.outer(p[i], p[i])) / xb.shape[0]
                total += weight * jac[i].T @ h_out @ jac[i]
    return total


@pytest.mark.parametrize("name", MLP_CASES)
def test_hessian_operator_matches_dense(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    op = HessianOperator(case.objective(), case.x0)
    h = case.hessian
    v = _rand(h.shape[0])
    torch.testing.assert_close(op @ v, h @ v, rtol=1e-10, atol=1e-12)
    block = _rand(h.shape[0], 3)
    torch.testing.assert_close(op @ block, h @ block, rtol=1e-10, atol=1e-12)
    assert op.num_matvecs == 4
    assert op.objective.counters.num_hvp == 4
    scipy_op = op.to_scipy()
    assert scipy_op.dtype == np.float64 and scipy_op.shape == h.shape
    np.testing.assert_allclose(scipy_op.matvec(v.numpy()), (h @ v).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scipy_op @ block.numpy(), (h @ block).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scipy_op.rmatvec(v.numpy()), (h @ v).numpy(), rtol=1e-10, atol=1e-12)
    assert_untouched(case.model, before)


@pytest.mark.parametrize("name", MLP_CASES)
def test_hvp_matches_finite_differences_of_the_gradient(name):
    case = mlp_case(name)
    obj = case.objective()
    x0 = case.x0
    v = _rand(x0.numel(), seed=5)
    v = v / v.norm()
    step = 1e-5
    g_plus = obj.loss_and_grad(x0 + step * v)[1]
    g_minus = obj.loss_and_grad(x0 - step * v)[1]
    fd = (g_plus - g_minus) / (2 * step)  # central difference, error O(step^2)
    hv = HessianOperator(obj, x0) @ v
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)


def test_hessian_operator_on_a_plain_callable_is_the_quadratic_matrix():
    f, a, x0 = quadratic([3.0, 1.0, -2.0, 0.5, 0.0])
    op = HessianOperator(f, x0)
    torch.testing.assert_close(op @ torch.eye(5, dtype=torch.float64), a)
    assert op.settings() == {"operator": "hessian", "dim": 5, "hvp_mode": "graph"}


@pytest.mark.parametrize("name", MLP_CASES)
def test_ggn_matches_hand_built_dense_ggn_and_is_psd(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    obj = case.objective()
    op = GGNOperator(obj, case.x0)
    g_dense = dense_ggn(case)
    n = g_dense.shape[0]
    g_op = op @ torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(g_op, g_dense, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_op, g_op.T, rtol=1e-9, atol=1e-12)
    eig = torch.linalg.eigvalsh((g_op + g_op.T) / 2)
    assert eig.min() > -1e-10 * eig.max()
    # GGN products are not Hessian-vector products: the objective's counters stay at 0.
    assert obj.counters.num_hvp == 0 and op.num_matvecs == n
    assert op.settings()["operator"] == "ggn" and op.settings()["bn_mode"] == case.bn_mode
    assert_untouched(case.model, before)


def test_ggn_equals_hessian_for_a_linear_model():
    # With logits linear in the parameters the network term vanishes: GGN = Hessian.
    inputs, targets = tiny_data()
    model = nn.Linear(6, 4).to(torch.float64)
    obj = ModelObjective(model, inputs, targets, bn_mode="eval", chunk_size=20)
    x0 = obj.base_point()
    eye = torch.eye(x0.numel(), dtype=torch.float64)
    torch.testing.assert_close(GGNOperator(obj, x0) @ eye, HessianOperator(obj, x0) @ eye)


def test_parameter_groups_are_modules_in_order():
    obj = mlp_case("bn-eval").objective()
    groups = parameter_groups(obj)
    assert list(groups) == ["0", "1", "3", "4", "6"]  # Linear, BN, Linear, BN, Linear
    assert [g.numel() for g in groups.values()] == [84, 24, 130, 20, 44]
    torch.testing.assert_close(torch.cat(list(groups.values())), torch.arange(302))


def test_parameter_groups_by_parameter_tensor():
    groups = parameter_groups(mlp_case("plain").objective(), by="parameter")
    assert list(groups) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert groups["0.bias"].tolist() == list(range(72, 84))


def test_parameter_groups_of_root_parameters():
    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2, dtype=torch.float64))
            self.lin = nn.Linear(2, 3).to(torch.float64)

        def forward(self, x):
            return self.lin(x * self.scale)

    obj = ModelObjective(Root(), torch.ones(4, 2, dtype=torch.float64), torch.zeros(4).long())
    groups = parameter_groups(obj)
    assert list(groups) == ["scale", "lin"]
    assert groups["lin"].tolist() == list(range(2, 11))


@pytest.mark.parametrize("name", ["plain", "bn-batch"])
def test_block_operator_is_the_dense_diagonal_block(name):
    case = mlp_case(name)
    obj = case.objective()
    h = case.hessian
    full = HessianOperator(obj, case.x0)
    for group, idx in parameter_groups(obj).items():
        block = BlockOperator(full, idx, name=group)
        eye = torch.eye(idx.numel(), dtype=torch.float64)
        torch.testing.assert_close(block @ eye, h[idx][:, idx], rtol=1e-10, atol=1e-12)
        settings = block.settings()
        assert settings["block"] == group and settings["dim"] == idx.numel()
        assert settings["full_dim"] == h.shape[0] and settings["operator"] == "block of hessian"
        assert settings["bn_mode"] == case.bn_mode


def test_block_operator_of_a_dense_matrix_and_a_slice():
    a = known_spectrum([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    block = BlockOperator(a, slice(1, 4))
    torch.testing.assert_close(block @ torch.eye(3, dtype=torch.float64), a[1:4, 1:4])
    assert block.objective is None and block.shape == (3, 3)


def test_dense_operator_and_as_operator():
    a = known_spectrum([2.0, 1.0, -1.0])
    op = as_operator(a)
    assert isinstance(op, DenseOperator) and as_operator(op) is op
    assert op.shape == (3, 3) and op.dtype == torch.float64 and op.device == a.device
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32)  # cast to the operator's dtype
    torch.testing.assert_close(op @ v, a @ v.double())
    np.testing.assert_allclose(op.to_scipy().matvec(v.numpy()), (a @ v.double()).numpy())
    assert "DenseOperator" in repr(op)


def test_resolve_operator():
    f, a, x0 = quadratic([1.0, 2.0, 3.0])
    assert isinstance(resolve_operator(f, x0), HessianOperator)
    assert isinstance(resolve_operator(f, x0, a), DenseOperator)
    with pytest.raises(ConfigError, match="does not match the parameter vector"):
        resolve_operator(f, x0, torch.eye(4, dtype=torch.float64))


def test_operator_meter_counts_products_and_objective_evaluations():
    case = mlp_case("plain")
    op = HessianOperator(case.objective(), case.x0)
    with OperatorMeter(op) as meter:
        op @ _rand(op.shape[0], 2)
    assert meter.num_matvecs == 2 and meter.cost.num_hvp == 2 and meter.cost.seconds > 0
    dense = as_operator(torch.eye(3, dtype=torch.float64))
    with OperatorMeter(dense) as meter:
        dense @ torch.ones(3, dtype=torch.float64)
    assert meter.num_matvecs == 1 and meter.cost.num_hvp == 0


# -- errors ---------------------------------------------------------------------------------


def test_errors_of_dense_operators():
    with pytest.raises(ConfigError, match="non-empty square matrix"):
        DenseOperator(torch.ones(2, 3))
    with pytest.raises(ConfigError, match="needs a floating matrix"):
        DenseOperator(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="expected a square tensor or an Operator"):
        as_operator([[1.0]])
    op = as_operator(torch.eye(3))
    with pytest.raises(ConfigError, match="cannot multiply"):
        op @ torch.ones(4)
    with pytest.raises(ConfigError, match="cannot multiply"):
        op @ torch.ones(3, 1, 1)
    with pytest.raises(ConfigError, match="cannot multiply"):
        op @ np.ones(3)


def test_base_operator_is_abstract():
    class Half(Operator):
        shape = (2, 2)
        dtype = torch.float64
        device = torch.device("cpu")

    with pytest.raises(NotImplementedError):
        Half() @ torch.ones(2, dtype=torch.float64)


def test_errors_of_ggn_operator():
    f, _, x0 = quadratic([1.0, 2.0])
    with pytest.raises(ConfigError, match="needs a network objective"):
        GGNOperator(f, x0)
    inputs, targets = tiny_data()
    model = tiny_mlp(batch_norm=False)
    obj = ModelObjective(model, inputs, targets, loss_fn=nn.functional.nll_loss)
    with pytest.raises(ConfigError, match="Gauss-Newton matrix is defined here for cross-entropy and MSE"):
        GGNOperator(obj, obj.base_point())


def test_errors_of_block_operator():
    a = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ConfigError, match="1-D integer tensor or a slice"):
        BlockOperator(a, torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match="block indices are empty"):
        BlockOperator(a, slice(2, 2))
    with pytest.raises(ConfigError, match=r"must lie in \[0, 4\)"):
        BlockOperator(a, torch.tensor([1, 4]))
    with pytest.raises(ConfigError, match="must be distinct"):
        BlockOperator(a, torch.tensor([1, 1]))


def test_parameter_groups_need_a_model_objective():
    f, _, x0 = quadratic([1.0, 2.0])
    with pytest.raises(ConfigError, match="parameter groups need a network objective"):
        parameter_groups(HessianOperator(f, x0).objective)
    with pytest.raises(ConfigError, match="grouped by 'module' or 'parameter', got 'layer'"):
        parameter_groups(mlp_case("plain").objective(), by="layer")
