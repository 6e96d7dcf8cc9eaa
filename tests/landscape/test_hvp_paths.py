"""The two Hessian-vector product paths (kept graph, forward-over-reverse) and the choice."""

from __future__ import annotations

import copy
import itertools
import threading

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
    # the first column went both ways twice: three HVPs more than the operator's products
    assert (op.num_matvecs, obj.counters.num_hvp, obj.counters.num_grad) == (3, 6, 1)
    assert op.settings()["hvp_probe"] == op.probe_seconds  # the extra products are explained

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
    assert other.counters.num_hvp == 4


@pytest.mark.parametrize(
    ("clock", "seconds", "winner"),
    [
        # graph 1.0 then 0.5 s, forward 3.0 (first call) then 0.25 s: the best of each counts
        ((0.0, 1.0, 4.0, 5.0, 5.5, 5.75), {"graph": 0.5, "forward": 0.25}, "forward"),
        ((0.0, 1.0, 1.5, 2.0, 3.0, 5.0), {"graph": 1.0, "forward": 0.5}, "forward"),
        ((0.0, 1.0, 4.0, 5.0, 5.5, 7.0), {"graph": 0.5, "forward": 1.5}, "graph"),
    ],
)
def test_the_probe_keeps_the_faster_path(monkeypatch, clock, seconds, winner):
    ticks = itertools.chain(clock, itertools.repeat(10.0))
    monkeypatch.setattr(operators.time, "perf_counter", lambda: next(ticks))
    case = mlp_case("plain")
    obj = case.objective()
    op = HessianOperator(obj, case.x0, probe=True)
    v = _probes(case.x0.numel(), 1)[:, 0]
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert op.settings()["hvp_mode"] == winner
    assert op.probe_seconds == seconds and op.settings()["hvp_probe"] == seconds
    torch.testing.assert_close(op @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert (obj.counters.num_grad, obj.counters.num_hvp, op.num_matvecs) == (1, 5, 2)
    assert isinstance(op._products, ForwardHVP) == (winner == "forward")  # the graph is freed


def test_a_winning_forward_path_releases_the_kept_graph(monkeypatch):
    ticks = itertools.chain((0.0, 1.0, 1.5, 2.0, 3.0, 3.5), itertools.repeat(10.0))
    monkeypatch.setattr(operators.time, "perf_counter", lambda: next(ticks))
    graphs = []
    case = mlp_case("plain")
    obj = case.objective()
    hvp_at = obj.hvp_at

    def keep(x, **kw):
        graphs.append(hvp_at(x, **kw))
        return graphs[-1]

    obj.hvp_at = keep  # type: ignore[method-assign]
    op = HessianOperator(obj, case.x0, probe=True)
    op @ _probes(case.x0.numel(), 1)[:, 0]
    assert op.settings()["hvp_mode"] == "forward"
    (graph,) = graphs
    assert graph._grad is None and graph._xr is None and graph.cached_chunks is None


def test_the_cache_is_guarded_by_a_lock():
    assert isinstance(operators._PROBED_LOCK, type(threading.Lock()))
    key = ("k",)
    operators._remember_path(key, "graph")
    assert operators._cached_path(key) == "graph" and operators._PROBED == {key: "graph"}


def _reviewer_objectives():
    """The review's pair: same sizes and batch shapes, other activation, BN mode and data."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(8, 3), torch.randint(0, 2, (8,))
    relu = ModelObjective(
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), inputs, targets, bn_mode="eval"
    )
    tanh = ModelObjective(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), inputs * 5, targets, bn_mode="batch"
    )
    return relu, tanh


def test_probe_keys_tell_architectures_and_bn_modes_apart():
    relu, tanh = _reviewer_objectives()
    key_relu = operators._probe_key(relu, relu.base_point())
    assert key_relu != operators._probe_key(tanh, tanh.base_point())
    assert key_relu != operators._probe_key(relu.with_bn_mode("batch"), relu.base_point())
    assert relu.fingerprint() is relu.fingerprint()  # computed once per objective
    assert key_relu == operators._probe_key(relu.with_model(copy.deepcopy(relu.model)), relu.base_point())
    other_loss = ModelObjective(relu.model, relu.inputs, relu.targets.float()[:, None].expand(8, 2),
                                loss="mse", bn_mode="eval")
    assert key_relu != operators._probe_key(other_loss, relu.base_point())


def test_the_key_needs_no_extra_pass_over_the_data():
    relu, _ = _reviewer_objectives()
    passes = [0]
    batches = relu.source.batches

    def counted():
        passes[0] += 1
        return batches()

    relu.source.batches = counted  # type: ignore[method-assign]
    relu.weights  # the survey every product makes  # noqa: B018
    before = passes[0]
    operators._probe_key(relu, relu.base_point())
    operators._probe_key(relu, relu.base_point())
    assert passes[0] == before


class _NoSetupContext(torch.autograd.Function):
    """tanh as an old-style autograd.Function (no ``setup_context``): torch.func refuses it."""

    @staticmethod
    def forward(ctx, t):
        out = torch.tanh(t)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class _CustomTanh(nn.Module):
    def forward(self, t):
        return _NoSetupContext.apply(t)


def _custom_objective() -> tuple[ModelObjective, ModelObjective]:
    """The custom-Function model and the same network with ``nn.Tanh`` (its reference)."""
    g = torch.Generator().manual_seed(5)
    inputs, targets = torch.randn(12, 3, generator=g, dtype=DTYPE), torch.randint(0, 3, (12,), generator=g)
    plain = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)
    custom = copy.deepcopy(plain)
    custom[1] = _CustomTanh()
    return (ModelObjective(custom, inputs, targets, bn_mode="eval"),
            ModelObjective(plain, inputs, targets, bn_mode="eval"))


def test_a_custom_function_gives_one_line_under_forward_and_falls_back_under_auto():
    custom, plain = _custom_objective()
    x0 = custom.base_point()
    v = _probes(x0.numel(), 1)[:, 0]
    op = HessianOperator(custom, x0, hvp_mode="forward")
    with pytest.raises(ConfigError, match=r"^forward-over-reverse Hessian-vector products are not available "
                       r"for this model \(RuntimeError: .*\); use hvp_mode='graph'$") as info:
        op @ v
    assert "\n" not in str(info.value) and "first batch" not in str(info.value)
    assert custom.counters.num_hvp == 0

    reference = HessianOperator(plain, x0, hvp_mode="graph") @ v
    auto = HessianOperator(custom, x0, probe=True)
    torch.testing.assert_close(auto @ v, reference, rtol=1e-9, atol=1e-10)
    assert auto.settings()["hvp_mode"] == "graph" and list(operators._PROBED.values()) == ["graph"]


def test_a_plain_function_with_a_custom_function_gives_the_one_line_error():
    x0 = torch.linspace(-1.0, 1.0, 4, dtype=DTYPE)

    def f(x):
        return _NoSetupContext.apply(x).pow(2).sum()

    op = HessianOperator(f, x0, hvp_mode="forward")
    message = r"not available for this objective \(RuntimeError: .*hvp_mode='graph'$"
    with pytest.raises(ConfigError, match=message):
        op @ torch.ones(4, dtype=DTYPE)


def test_a_cached_forward_decision_falls_back_to_the_graph_and_is_rewritten():
    custom, plain = _custom_objective()
    x0 = custom.base_point()
    key = operators._probe_key(custom, x0)
    operators._PROBED[key] = "forward"  # as if a probe on another model had chosen it
    vs = _probes(x0.numel())
    reference = HessianOperator(plain, x0, hvp_mode="graph") @ vs
    op = HessianOperator(custom, x0, probe=True)
    torch.testing.assert_close(op @ vs[:, 0], reference[:, 0], rtol=1e-9, atol=1e-10)
    assert op.settings()["hvp_mode"] == "graph" and operators._PROBED[key] == "graph"
    assert "hvp_probe" not in op.settings()
    # and a block, under another cached forward decision
    operators._PROBED[key] = "forward"
    block = HessianOperator(custom, x0, probe=True)
    torch.testing.assert_close(block @ vs, reference, rtol=1e-9, atol=1e-10)
    assert block.settings()["hvp_mode"] == "graph" and operators._PROBED[key] == "graph"


def test_a_loss_error_under_forward_still_blames_the_loss():
    case = mlp_case("plain")
    obj = ModelObjective(case.model, case.inputs, case.targets.float(), loss="cross_entropy", bn_mode="eval")
    op = HessianOperator(obj, case.x0, hvp_mode="forward")
    with pytest.raises(ConfigError, match="evaluating the loss 'cross_entropy' on the first batch failed"):
        op @ _probes(case.x0.numel(), 1)[:, 0]


@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
def test_forward_blocks_are_one_vmap_equal_to_the_column_loop(bn_mode):
    obj = _conv_objective(bn_mode=bn_mode)
    x0 = obj.base_point()
    vs = _probes(x0.numel(), 4)
    batched = ForwardHVP(obj, x0)
    block = batched.matmat(vs)
    assert batched.batched  # vmap went through
    looped = torch.stack([ForwardHVP(obj, x0)(vs[:, j]) for j in range(4)], dim=1)
    torch.testing.assert_close(block, looped, rtol=1e-10, atol=1e-12)
    assert obj.counters.num_hvp == 8


def test_forward_blocks_fall_back_to_columns_when_vmap_fails(monkeypatch):
    case = mlp_case("plain")
    obj = case.objective()
    forward = ForwardHVP(obj, case.x0)

    def no_vmap(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    vs = _probes(case.x0.numel())
    torch.testing.assert_close(forward.matmat(vs), case.hessian @ vs, rtol=1e-9, atol=1e-10)
    assert not forward.batched and obj.counters.num_hvp == 3


def test_a_sharded_objective_refuses_forward_and_is_never_probed():
    from sharpminima.landscape.sharded import DistributedObjective

    case = mlp_case("plain")
    sharded = DistributedObjective(case.objective())
    with pytest.raises(ConfigError, match=r"not available for DistributedObjective .*hvp_mode='graph'"):
        HessianOperator(sharded, case.x0, hvp_mode="forward")
    with pytest.raises(ConfigError, match="not available for DistributedObjective"):
        ForwardHVP(sharded, case.x0)
    auto = HessianOperator(sharded, case.x0, probe=True)
    assert auto.settings()["hvp_mode"] == "graph"
    v = _probes(case.x0.numel(), 1)[:, 0]
    torch.testing.assert_close(auto @ v, case.hessian @ v, rtol=1e-9, atol=1e-10)
    assert operators._PROBED == {}


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
