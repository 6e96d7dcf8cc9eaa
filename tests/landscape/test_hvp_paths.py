"""The two Hessian-vector product paths (kept graph, forward-over-reverse) and the choice."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from cases import MLP_CASES, assert_untouched, mlp_case, quadratic, state_snapshot
from torch import nn

from sharpminima.errors import ConfigError
from sharpminima.landscape import hessian_eigenvalues, operators
from sharpminima.landscape.graph_hvp import ForwardHVP
from sharpminima.landscape.objective import CountedObjective, FunctionObjective, ModelObjective
from sharpminima.landscape.operators import HessianOperator

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _no_cached_decisions(monkeypatch):
    """Every test starts with no probe decision cached in this process."""
    monkeypatch.setattr(operators, "_PROBED", {})


def _probes(n: int, k: int = 3, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=DTYPE)


def _conv_net(seed: int = 0) -> nn.Module:
    """1x6x6 -> conv 3x3 (3 channels) -> BatchNorm2d -> tanh -> 3 classes, float64 (346 params)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 6), nn.Tanh(),
        nn.Linear(6, 3),
    ).to(DTYPE)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE) * 0.5)
        model.train()
        for _ in range(3):  # running statistics off their defaults
            model(torch.randn(16, 1, 6, 6, generator=g, dtype=DTYPE) * 1.3 + 0.2)
        model.eval()
    return model


def _conv_objective(model: nn.Module | None = None, bn_mode: str = "eval") -> ModelObjective:
    """20 samples in batches of 8, 8 and 4 (unequal weights)."""
    g = torch.Generator().manual_seed(3)
    inputs = torch.randn(20, 1, 6, 6, generator=g, dtype=DTYPE)
    targets = torch.randint(0, 3, (20,), generator=g)
    model = _conv_net() if model is None else model
    inputs = inputs.to(next(model.parameters()).dtype)
    return ModelObjective(model, inputs, targets, bn_mode=bn_mode, chunk_size=8)  # type: ignore[arg-type]


def _dense(obj) -> torch.Tensor:
    x0 = obj.base_point()
    h = torch.autograd.functional.hessian(obj, x0, vectorize=True)
    return (h + h.T) / 2


@pytest.mark.parametrize("mode", ["graph", "forward"])
@pytest.mark.parametrize("name", MLP_CASES)
def test_both_paths_equal_the_dense_hessian_on_an_mlp(name, mode):
    case = mlp_case(name)
    before = state_snapshot(case.model)
    obj = case.objective()
    op = HessianOperator(obj, case.x0, hvp_mode=mode)
    vs = _probes(case.x0.numel())
    torch.testing.assert_close(op @ vs[:, 0], case.hessian @ vs[:, 0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(op @ vs, case.hessian @ vs, rtol=1e-9, atol=1e-10)
    assert op.num_matvecs == obj.counters.num_hvp == 4
    assert obj.counters.num_grad == (1 if mode == "graph" else 0)  # the graph's build
    assert op.settings()["hvp_mode"] == mode
    assert_untouched(case.model, before)


@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
@pytest.mark.parametrize("mode", ["graph", "forward"])
def test_both_paths_equal_the_dense_hessian_on_a_conv_net_with_unequal_batches(mode, bn_mode):
    obj = _conv_objective(bn_mode=bn_mode)
    assert obj.num_chunks == 3 and obj.weights == [0.4, 0.4, 0.2]
    x0 = obj.base_point()
    hessian = _dense(obj)
    vs = _probes(x0.numel())
    op = HessianOperator(obj, x0, hvp_mode=mode)
    torch.testing.assert_close(op @ vs, hessian @ vs, rtol=1e-9, atol=1e-10)


def test_the_paths_agree_to_float32_round_off():
    model = copy.deepcopy(_conv_net()).float()
    obj = _conv_objective(model)
    x0 = obj.base_point()
    v = _probes(x0.numel(), 1)[:, 0].float()
    graph = HessianOperator(obj, x0, hvp_mode="graph") @ v
    forward = HessianOperator(obj, x0, hvp_mode="forward") @ v
    torch.testing.assert_close(forward, graph, rtol=1e-4, atol=1e-5 * float(graph.abs().max()))


def test_both_paths_on_a_plain_function():
    f, a, x0 = quadratic([3.0, 1.0, -2.0, 0.5, 0.0])

    def g(x):
        return f(x) + torch.sin(x).sum() * x.pow(2).sum()

    hessian = torch.autograd.functional.hessian(g, x0)
    eye = torch.eye(5, dtype=DTYPE)
    for fn, ref in ((f, a), (g, hessian)):
        for mode in ("graph", "forward"):
            op = HessianOperator(fn, x0, hvp_mode=mode)
            torch.testing.assert_close(op @ eye, ref)
            torch.testing.assert_close(op @ eye[:, 1], ref[:, 1])


def test_auto_on_cpu_is_the_kept_graph_without_a_probe():
    case = mlp_case("bn-eval")
    obj = case.objective()
    op = HessianOperator(obj, case.x0)
    assert op.hvp_mode == "auto" and op.settings()["hvp_mode"] == "graph"
    v = _probes(case.x0.numel(), 1)[:, 0]
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert op.probe_seconds is None and operators._PROBED == {}
    assert (obj.counters.num_grad, obj.counters.num_hvp, op.num_matvecs) == (1, 1, 1)
    assert HessianOperator(obj, case.x0, probe=False).settings()["hvp_mode"] == "graph"


def test_a_forced_probe_chooses_caches_and_counts_its_products():
    case = mlp_case("bn-eval")
    obj = case.objective()
    op = HessianOperator(obj, case.x0, probe=True)
    assert op.settings()["hvp_mode"] == "auto"  # not decided before the first product
    vs = _probes(case.x0.numel())
    torch.testing.assert_close(op @ vs, case.hessian @ vs, rtol=1e-9, atol=1e-10)
    chosen = op.settings()["hvp_mode"]
    assert chosen in ("graph", "forward")
    assert op.probe_seconds is not None and set(op.probe_seconds) == {"graph", "forward"}
    assert list(operators._PROBED.values()) == [chosen]
    # the first column went both ways: one HVP more than the operator's products
    assert (op.num_matvecs, obj.counters.num_hvp, obj.counters.num_grad) == (3, 4, 1)

    # a second operator on the same model and data takes the cached decision: no probe
    twin = case.objective()
    again = HessianOperator(twin, case.x0, probe=True)
    assert again.settings()["hvp_mode"] == "auto"  # the constructor looks nothing up
    torch.testing.assert_close(again @ vs[:, :2], case.hessian @ vs[:, :2], rtol=1e-9, atol=1e-10)
    assert again.settings()["hvp_mode"] == chosen
    assert again.probe_seconds is None
    assert (twin.counters.num_hvp, twin.counters.num_grad) == (2, int(chosen == "graph"))

    # other data (another batch count) is another decision: a second probe
    other = ModelObjective(case.model, case.inputs, case.targets, bn_mode="eval", chunk_size=16)
    third = HessianOperator(other, case.x0, probe=True)
    torch.testing.assert_close(third @ vs[:, 0], case.hessian @ vs[:, 0], rtol=1e-9, atol=1e-10)
    assert third.probe_seconds is not None and len(operators._PROBED) == 2
    assert other.counters.num_hvp == 2


@pytest.mark.parametrize(("clock", "winner"), [((0.0, 1.0, 1.5), "forward"), ((0.0, 1.0, 3.0), "graph")])
def test_the_probe_keeps_the_faster_path(monkeypatch, clock, winner):
    ticks = itertools.chain(clock, itertools.repeat(10.0))
    monkeypatch.setattr(operators.time, "perf_counter", lambda: next(ticks))
    case = mlp_case("plain")
    obj = case.objective()
    op = HessianOperator(obj, case.x0, probe=True)
    v = _probes(case.x0.numel(), 1)[:, 0]
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert op.settings()["hvp_mode"] == winner
    assert op.probe_seconds == {"graph": 1.0, "forward": clock[2] - 1.0}
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert (obj.counters.num_grad, obj.counters.num_hvp, op.num_matvecs) == (1, 3, 2)
    assert isinstance(op._products, ForwardHVP) == (winner == "forward")  # the graph is freed


def test_a_model_without_forward_mode_keeps_the_graph():
    case = mlp_case("plain")
    obj = case.objective()

    def no_forward_mode(x, v):
        raise RuntimeError("no forward AD formula for this operation")

    obj.hvp_forward = no_forward_mode  # type: ignore[method-assign]
    op = HessianOperator(obj, case.x0, probe=True)
    v = _probes(case.x0.numel(), 1)[:, 0]
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert op.settings()["hvp_mode"] == "graph" and list(operators._PROBED.values()) == ["graph"]
    assert (obj.counters.num_grad, obj.counters.num_hvp) == (1, 1)


def test_only_network_objectives_are_probed():
    f, a, x0 = quadratic([3.0, 1.0, -2.0])
    op = HessianOperator(f, x0, probe=True)
    assert op.settings()["hvp_mode"] == "graph"
    torch.testing.assert_close(op @ torch.eye(3, dtype=DTYPE), a)
    assert op.probe_seconds is None and operators._PROBED == {}


def test_an_unknown_mode_is_refused():
    f, _, x0 = quadratic([1.0, 2.0])
    with pytest.raises(ConfigError, match="hvp_mode must be one of"):
        HessianOperator(f, x0, hvp_mode="reverse")  # type: ignore[arg-type]


def test_without_a_kept_graph_the_path_is_recomputed_double_backprop():
    case = mlp_case("plain")
    obj = case.objective()
    op = HessianOperator(obj, case.x0, keep_graph=False)
    v = _probes(case.x0.numel(), 1)[:, 0]
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert op.settings()["hvp_mode"] == "recompute"
    forward = HessianOperator(obj, case.x0, keep_graph=False, hvp_mode="forward")
    assert forward.settings()["hvp_mode"] == "forward"


def test_forward_products_need_a_differentiable_objective():
    class Opaque(CountedObjective):
        dim, dtype, device = 2, DTYPE, torch.device("cpu")

        def _loss(self, x):
            return x.sum()

    with pytest.raises(ConfigError, match="forward-over-reverse products need"):
        ForwardHVP(Opaque(), torch.zeros(2, dtype=DTYPE))(torch.ones(2, dtype=DTYPE))


def test_results_record_the_path():
    case = mlp_case("plain")
    for mode in ("graph", "forward"):
        obj = case.objective()
        op = HessianOperator(obj, case.x0, hvp_mode=mode)
        result = hessian_eigenvalues(obj, case.x0, k=1, operator=op)
        assert result.settings["hvp_mode"] == mode
        torch.testing.assert_close(
            torch.as_tensor(result.value, dtype=DTYPE).reshape(-1)[0], case.eigenvalues[0],
            rtol=1e-6, atol=1e-8,
        )
    fobj = FunctionObjective(quadratic([2.0, 1.0])[0], case.x0[:2])
    settings = HessianOperator(fobj, case.x0[:2]).settings()
    assert settings == {"operator": "hessian", "dim": 2, "hvp_mode": "graph"}
