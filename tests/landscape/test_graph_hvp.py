"""Hessian-vector products from a kept gradient graph, against dense float64 Hessians."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from cases import MLP_CASES, assert_untouched, mlp_case, quadratic, state_snapshot

from sharpminima.errors import ConfigError
from sharpminima.landscape import hessian_eigenvalues, hessian_trace
from sharpminima.landscape.objective import FunctionObjective, GraphHVP, ModelObjective, bn_mode
from sharpminima.landscape.operators import HessianOperator


def _probes(n: int, k: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, k, generator=g, dtype=torch.float64)


def _forward_bytes(obj: ModelObjective, x: torch.Tensor) -> int:
    """Bytes of the distinct new storages a forward pass alone saves, summed over chunks."""
    xr = x.clone().requires_grad_(True)
    existing = {xr.untyped_storage().data_ptr(), obj.inputs.untyped_storage().data_ptr()}
    existing |= {t.untyped_storage().data_ptr() for t in obj.model.state_dict().values()}
    total = 0
    with bn_mode(obj.model, obj.bn_mode), torch.enable_grad():
        for (xb, yb), _ in obj.batches():
            seen: dict[int, int] = {}

            def pack(t, seen=seen):
                if t.untyped_storage().data_ptr() not in existing:
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t.detach()

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                torch.nn.functional.cross_entropy(
                    torch.func.functional_call(obj.model, obj.unflatten(xr), (xb,)), yb)
            total += sum(seen.values())
    return total


@pytest.mark.parametrize("name", MLP_CASES)
def test_products_match_the_dense_hessian_and_leave_the_model_alone(name):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    obj = case.objective()
    products = obj.hvp_at(case.x0)
    vs = _probes(case.x0.numel())
    for j in range(vs.shape[1]):
        torch.testing.assert_close(products(vs[:, j]), case.hessian @ vs[:, j], rtol=1e-9, atol=1e-10)
    assert products.cached_chunks == products.num_chunks == 2
    assert products.graph_bytes > _forward_bytes(obj, case.x0)  # the backward's saves count too
    # the graph is built once (one gradient pass); every product is one HVP
    assert (obj.counters.num_grad, obj.counters.num_hvp, obj.counters.num_loss) == (1, 3, 0)
    assert_untouched(case.model, before)


@pytest.mark.parametrize("name", MLP_CASES)
def test_products_equal_plain_double_backprop(name):
    case = mlp_case(name)
    obj = case.objective()
    products = obj.hvp_at(case.x0)
    v = _probes(case.x0.numel(), 1)[:, 0]
    torch.testing.assert_close(products(v), obj.hvp(case.x0, v), rtol=1e-12, atol=1e-13)


def test_a_released_graph_is_freed():
    case = mlp_case("bn-batch")
    alive: list[weakref.ref] = []
    acts = [m for m in case.model.modules() if isinstance(m, torch.nn.Tanh)]
    handles = [m.register_forward_hook(lambda _m, _i, out: alive.append(weakref.ref(out))) for m in acts]
    try:
        products = case.objective().hvp_at(case.x0)
        products(_probes(case.x0.numel(), 1)[:, 0])
        assert len(alive) == 2 * len(acts)  # both chunks ran through every activation
        # a pack hook that returned its input would tie saved outputs to their own nodes
        # in a cycle that outlives release(); the graph must hold detached aliases only
        products.release()
        gc.collect()
        assert all(r() is None for r in alive)
    finally:
        for h in handles:
            h.remove()


def test_a_small_budget_in_batch_mode_keeps_the_first_chunk():
    case = mlp_case("bn-batch")  # BN statistics per 32-sample chunk: 2 chunks
    obj = case.objective()
    full = GraphHVP(obj, case.x0)
    v = _probes(case.x0.numel(), 1)[:, 0]
    full(v)
    part = obj.hvp_at(case.x0, max_graph_bytes=int(0.75 * full.graph_bytes))
    torch.testing.assert_close(part(v), case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert (part.cached_chunks, part.num_chunks) == (1, 2)


@pytest.mark.parametrize("name", ["plain", "bn-eval"])
def test_a_small_budget_keeps_some_chunks_and_recomputes_the_rest(name):
    case = mlp_case(name)
    # eval mode: the function does not depend on the chunking, so 16-sample chunks (4 of
    # them) have the same dense Hessian as the case's 32-sample chunks
    obj = ModelObjective(case.model, case.inputs, case.targets, bn_mode="eval", chunk_size=16)
    full = GraphHVP(obj, case.x0)
    v = _probes(case.x0.numel(), 1)[:, 0]
    full(v)
    per_chunk = full.graph_bytes / full.num_chunks
    for budget, kept in ((0, 0), (int(1.5 * per_chunk), 1), (int(3.5 * per_chunk), 3)):
        part = obj.hvp_at(case.x0, max_graph_bytes=budget)
        torch.testing.assert_close(part(v), case.hessian @ v, rtol=1e-9, atol=1e-10)
        assert part.cached_chunks == kept and part.num_chunks == 4
        assert part.graph_bytes <= budget


def test_release_frees_the_graph_and_the_next_product_rebuilds_it():
    case = mlp_case("bn-batch")
    obj = case.objective()
    products = obj.hvp_at(case.x0)
    v = _probes(case.x0.numel(), 1)[:, 0]
    first = products(v)
    products.release()
    assert products.cached_chunks is None
    torch.testing.assert_close(products(v), first, rtol=0, atol=0)
    assert obj.counters.num_grad == 2


def test_function_objective_quadratic_and_linear():
    f, a, x0 = quadratic([5.0, 2.0, -1.0, 0.5])
    products = FunctionObjective(f, x0).hvp_at(x0)
    v = _probes(4, 1)[:, 0]
    torch.testing.assert_close(products(v), a @ v)
    linear = FunctionObjective(lambda x: (x * torch.arange(4.0, dtype=x.dtype)).sum(), x0).hvp_at(x0)
    assert torch.equal(linear(v), torch.zeros(4, dtype=torch.float64))


def test_negative_budget_is_refused():
    case = mlp_case("plain")
    with pytest.raises(ConfigError, match="max_graph_bytes must be >= 0"):
        case.objective().hvp_at(case.x0, max_graph_bytes=-1)


@pytest.mark.parametrize("keep_graph", [True, False])
def test_hessian_operator_measures_agree_with_and_without_the_kept_graph(keep_graph):
    case = mlp_case("bn-batch")
    op = HessianOperator(case.objective(), case.x0, keep_graph=keep_graph)
    v = _probes(case.x0.numel(), 2)
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    res = hessian_eigenvalues(
        case.objective(), case.x0, k=3, tol=1e-8,
        operator=HessianOperator(case.objective(), case.x0, keep_graph=keep_graph),
    )
    torch.testing.assert_close(
        torch.as_tensor(res.values, dtype=torch.float64), case.eigenvalues[:3], rtol=1e-6, atol=1e-8
    )
    tr = hessian_trace(
        case.objective(), case.x0, num_probes=200, seed=0,
        operator=HessianOperator(case.objective(), case.x0, keep_graph=keep_graph),
    )
    assert abs(tr.value - float(case.hessian.trace())) < 3 * tr.stderr
