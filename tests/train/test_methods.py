"""Step methods: each one's defining property against a by-hand computation, options, training."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.store import Store
from sharpminima.train import METHODS, make_step, train
from sharpminima.train.methods import batch_loss
from sm_testing import make_tiny, small_mlp

D = torch.float64


def _data(n=12, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, features, generator=g, dtype=D), torch.randint(classes, (n,), generator=g)


def _bn_net(seed=0, features=6, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, classes)).to(D)


def _linear_net(seed=0, features=6, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 4), nn.Tanh(), nn.Linear(4, classes)).to(D)


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr)


def grad(f):
    """``w -> grad f(w)`` for a dict of tensors (plain autograd: BN may update a twin's buffers)."""

    def gradient(w, *args):
        leaves = {k: v.detach().requires_grad_(True) for k, v in w.items()}
        return dict(zip(leaves, torch.autograd.grad(f(leaves, *args), list(leaves.values())), strict=True))

    return gradient


def _cfg(method, **args):
    return TrainConfig(method=method, method_args=tuple(sorted(args.items())))


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _loss_of(model, x, y):
    """``params -> mean CE`` on a private copy of ``model`` (its buffers are not the caller's)."""
    twin = copy.deepcopy(model)
    return lambda params: F.cross_entropy(functional_call(twin, params, (x,)), y)


def _assert_params(model, expected, **tol):
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], **tol, msg=k)


def _buffers_after_one_forward(model, x):
    twin = copy.deepcopy(model)
    twin(x)
    return [b.clone() for b in twin.buffers()]


# ---------------------------------------------------------------- ghost BatchNorm


def _ghost_loss(p, x, y, chunk, eps=1e-5):
    """The BN net's size-weighted loss, each chunk normalised by its own statistics.

    ``ceil(n / chunk)`` near-equal chunks (``tensor_split``), as ghost BatchNorm cuts them.
    """
    total = 0.0
    pieces = -(-len(x) // chunk)
    for xc, yc in zip(x.tensor_split(pieces), y.tensor_split(pieces), strict=True):
        h = xc @ p["0.weight"].T + p["0.bias"]
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + eps) * p["1.weight"] + p["1.bias"]
        logits = torch.relu(h) @ p["3.weight"].T + p["3.bias"]
        total = total + F.cross_entropy(logits, yc, reduction="sum")
    return total / len(x)


def test_ghost_batch_never_leaves_a_one_sample_virtual_batch():
    x, y = _data(n=9)
    model = _bn_net()
    loss = batch_loss(model, x, y, ghost_batch_size=4)  # 3, 3, 3, not 4, 4, 1 (BN would fail)
    torch.testing.assert_close(loss, _ghost_loss(_params(model), x, y, 4))


def test_ghost_batch_loss_and_grads_equal_separate_bn_per_virtual_batch():
    x, y = _data(n=10)
    model = _bn_net()
    w = _params(model)
    loss = batch_loss(model, x, y, ghost_batch_size=4)  # virtual batches 4, 3, 3
    loss.backward()
    torch.testing.assert_close(loss, _ghost_loss(w, x, y, 4))
    expected = grad(_ghost_loss)(w, x, y, 4)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[k], msg=k)
    bn, mean, var = model[1], torch.zeros(5, dtype=D), torch.ones(5, dtype=D)
    for xc in x.tensor_split(3):  # running statistics move once per virtual batch
        h = xc @ w["0.weight"].T + w["0.bias"]
        mean = 0.9 * mean + 0.1 * h.mean(0)
        var = 0.9 * var + 0.1 * h.var(0, unbiased=True)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert int(bn.num_batches_tracked) == 3


@pytest.mark.parametrize("ghost", [None, 10, 64])
def test_ghost_size_at_least_the_batch_is_plain(ghost):
    x, y = _data(n=10)
    assert torch.equal(batch_loss(_bn_net(), x, y, ghost), F.cross_entropy(_bn_net()(x), y))


def test_ghost_bn_step_is_one_step_on_the_ghost_loss():
    x, y = _data(n=10)
    model = _bn_net()
    w = _params(model)
    g = grad(_ghost_loss)(w, x, y, 4)
    make_step(_cfg("ghost_bn", ghost_batch_size=4))(model, _sgd(model), x, y)
    _assert_params(model, {k: w[k] - 0.1 * g[k] for k in w})


# ---------------------------------------------------------------- SAM and ASAM


def _two_step_by_hand(loss, w, lr, ascent):
    """``w - lr grad L(w + e)`` with ``e = ascent(w, grad L(w))``."""
    e = ascent(w, grad(loss)(w))
    g_sam = grad(loss)({k: w[k] + e[k] for k in w})
    return {k: w[k] - lr * g_sam[k] for k in w}


def _norm(tensors):
    return torch.sqrt(sum((t**2).sum() for t in tensors))


def _sam_ascent(rho):
    return lambda w, g: {k: rho * g[k] / _norm(g.values()) for k in g}


def test_sam_step_equals_the_two_step_computation():
    x, y = _data()
    model = _bn_net()
    expected = _two_step_by_hand(_loss_of(model, x, y), _params(model), 0.1, _sam_ascent(0.05))
    buffers = _buffers_after_one_forward(model, x)
    loss = make_step(_cfg("sam", rho=0.05))(model, _sgd(model), x, y)
    _assert_params(model, expected)
    torch.testing.assert_close(loss, _loss_of(_bn_net(), x, y)(_params(_bn_net())))
    for b, e in zip(model.buffers(), buffers, strict=True):  # only the first pass moved them
        assert torch.equal(b, e)


def test_asam_step_equals_the_two_step_computation():
    x, y = _data()
    model, rho, eta = _bn_net(), 0.5, 0.01

    def ascent(w, g):  # e = rho T^2 g / ||T g||, T = |w| + eta on weights, 1 on biases
        t = {k: w[k].abs() + eta if k.endswith("weight") else torch.ones_like(w[k]) for k in w}
        norm = _norm(t[k] * g[k] for k in g)
        return {k: rho * t[k] ** 2 * g[k] / norm for k in g}

    expected = _two_step_by_hand(_loss_of(model, x, y), _params(model), 0.1, ascent)
    make_step(_cfg("asam", rho=rho, eta=eta))(model, _sgd(model), x, y)
    _assert_params(model, expected)


def test_sam_with_ghost_bn_uses_the_ghost_loss_in_both_passes():
    x, y = _data(n=10)
    model = _bn_net()
    loss = lambda p: _ghost_loss(p, x, y, 4)  # noqa: E731
    expected = _two_step_by_hand(loss, _params(model), 0.1, _sam_ascent(0.05))
    make_step(_cfg("sam", rho=0.05, ghost_batch_size=4))(model, _sgd(model), x, y)
    _assert_params(model, expected)


# ---------------------------------------------------------------- conservative training


def test_conservative_step_equals_inner_iterations_by_hand():
    x, y = _data()
    model, lam, lr = _linear_net(), 0.5, 0.1
    loss, x0 = _loss_of(model, x, y), _params(model)
    w = dict(x0)
    for _ in range(2):  # x <- x - lr (grad f_B(x) + lam (x - x_k))
        g = grad(loss)(w)
        w = {k: w[k] - lr * (g[k] + lam * (w[k] - x0[k])) for k in w}
    out = make_step(_cfg("conservative", lam=lam, inner_iters=2))(model, _sgd(model, lr), x, y)
    _assert_params(model, w)
    torch.testing.assert_close(out, loss(x0))


def test_proximal_objective_decreases_over_the_inner_loop():
    x, y = _data(n=32)
    base, lam = _linear_net(), 1e-3
    loss, x0 = _loss_of(base, x, y), _params(base)

    def objective(model):
        w = _params(model)
        return loss(w) + lam / 2 * sum(((w[k] - x0[k]) ** 2).sum() for k in w)

    values = [objective(base)]
    for iters in range(1, 6):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # the paper's inner Adam
        make_step(_cfg("conservative", lam=lam, inner_iters=iters))(model, opt, x, y)
        values.append(objective(model))
    assert all(b < a for a, b in zip(values, values[1:], strict=False)), values


# ---------------------------------------------------------------- adversarial training


@pytest.mark.parametrize(
    ("dataset", "clip", "bounds"),
    [
        ("mnist", "auto", (0.0, 1.0)),
        ("tiny", "auto", None),
        ("mnist", "none", None),
        ("tiny", (0.2, 0.8), (0.2, 0.8)),
    ],
)
def test_adversarial_step_equals_fgsm_by_hand(dataset, clip, bounds):
    x, y = _data()
    model, eps, alpha = _bn_net(), 0.3, 0.25
    w = _params(model)
    twin = copy.deepcopy(model)
    x_req = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(F.cross_entropy(twin(x_req), y), x_req)
    x_adv = x + eps * grad_x.sign()
    if bounds is not None:
        x_adv = x_adv.clamp(*bounds)
    assert (bounds is None) == bool((x_adv > 1).any() or (x_adv < 0).any())  # the clip matters
    clean, adv = _loss_of(model, x, y), _loss_of(model, x_adv, y)
    g = grad(lambda p: alpha * clean(p) + (1 - alpha) * adv(p))(w)
    buffers = _buffers_after_one_forward(model, x)
    cfg = _cfg("adversarial", eps=eps, alpha=alpha, clip=clip).replace(dataset=dataset)
    make_step(cfg)(model, _sgd(model), x, y)
    _assert_params(model, {k: w[k] - 0.1 * g[k] for k in w})
    for b, e in zip(model.buffers(), buffers, strict=True):
        assert torch.equal(b, e)


# ---------------------------------------------------------------- noise injection


def test_grad_noise_follows_its_schedule_and_the_global_rng():
    x, y = _data()
    model, eta, gamma, lr = _linear_net(), 0.3, 0.55, 0.1
    opt = _sgd(model, lr)
    step = make_step(_cfg("grad_noise", eta=eta, gamma=gamma))
    w, loss = _params(model), _loss_of(model, x, y)
    torch.manual_seed(7)
    for t in range(2):
        g = grad(loss)(w)
        std = math.sqrt(eta / (1 + t) ** gamma)
        w = {k: w[k] - lr * (g[k] + std * torch.randn_like(g[k])) for k in w}
    torch.manual_seed(7)
    for _ in range(2):
        step(model, opt, x, y)
    _assert_params(model, w)
    assert opt.state_dict()["param_groups"][0]["noise_step"] == 2


def test_noise_clock_survives_an_optimizer_state_round_trip():
    x, y = _data()
    model = _linear_net()
    opt = _sgd(model)
    step = make_step(_cfg("grad_noise", eta=0.3))
    step(model, opt, x, y)
    twin = copy.deepcopy(model)
    resumed = _sgd(twin)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.param_groups[0]["noise_step"] == 1
    for m, o in ((model, opt), (twin, resumed)):
        torch.manual_seed(3)
        step(m, o, x, y)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))


def test_iterate_noise_perturbs_the_weights_after_the_step():
    x, y = _data()
    model, std, gamma, lr = _linear_net(), 1e-2, 1.0, 0.1
    opt = _sgd(model, lr)
    step = make_step(_cfg("iterate_noise", std=std, gamma=gamma))
    w, loss = _params(model), _loss_of(model, x, y)
    torch.manual_seed(5)
    for t in range(2):
        g = grad(loss)(w)
        w = {k: w[k] - lr * g[k] for k in w}
        w = {k: v + std / (1 + t) ** (gamma / 2) * torch.randn_like(v) for k, v in w.items()}
    torch.manual_seed(5)
    for _ in range(2):
        step(model, opt, x, y)
    _assert_params(model, w)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unknown_option_is_a_config_error(method):
    with pytest.raises(ConfigError, match=rf"unknown option\(s\) \['bogus'\] for method '{method}'"):
        make_step(_cfg(method, bogus=1))


@pytest.mark.parametrize(
    ("method", "option", "value", "message"),
    [
        ("sam", "rho", 0.0, "a positive number"),
        ("sam", "ghost_batch_size", 0, "a positive integer or none"),
        ("asam", "eta", -1.0, "a non-negative number"),
        ("asam", "rho", True, "a positive number"),
        ("conservative", "inner_iters", 0, "a positive integer"),
        ("conservative", "lam", float("nan"), "a non-negative number"),
        ("adversarial", "alpha", 1.5, r"a number in \[0, 1\]"),
        ("adversarial", "clip", "data", "'auto', 'none' or"),
        ("adversarial", "clip", (1.0, 0.0), r".*with lo < hi, got \(1.0, 0.0\)"),
        ("grad_noise", "eta", "big", "a non-negative number"),
        ("iterate_noise", "std", -1e-3, "a non-negative number"),
        ("ghost_bn", "ghost_batch_size", None, "a positive integer, got None"),
        ("plain", "compile", 1, "true or false"),
        ("plain", "autocast", "fp16", r"one of \['bf16', 'none'\]"),
    ],
)
def test_invalid_option_values_are_config_errors(method, option, value, message):
    with pytest.raises(ConfigError, match=rf"method '{method}' option '{option}' must be {message}"):
        make_step(_cfg(method, **{option: value}))


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown training method 'nope'; choose one of adversarial"):
        make_step(TrainConfig(method="nope"))


# ---------------------------------------------------------------- in the training loop

TINY = TrainConfig(net="small", dataset="tiny", batch_size=50, epochs=2)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("sam", {}),
        ("asam", {}),
        ("conservative", {}),
        ("adversarial", {}),
        ("grad_noise", {}),
        ("iterate_noise", {}),
        ("ghost_bn", {"ghost_batch_size": 16}),
        ("sam", {"ghost_batch_size": 16}),
        ("conservative", {"ghost_batch_size": 16}),
    ],
)
def test_training_with_each_method_runs_and_learns(method, args):
    data = make_tiny(n_train=200, n_test=50)
    cfg = TINY.replace(method=method, method_args=tuple(sorted(args.items())))
    run = train(cfg, dataset=data, model_factory=small_mlp)
    assert run.status == "done" and run.epochs == 2
    assert all(math.isfinite(h["epoch_loss"]) for h in run.history)
    assert run.history[-1]["train_loss"] < math.log(4)


def test_stochastic_method_resumes_bit_identically(tmp_path):
    data = make_tiny(n_train=200, n_test=50)
    cfg = TINY.replace(epochs=3, method="grad_noise", method_args=(("eta", 0.1),))
    reference = train(cfg, dataset=data, store=Store(tmp_path / "ref"), model_factory=small_mlp)
    steps = {"n": 0}

    def die_mid_epoch_2(event, info):
        steps["n"] += event == "step"
        if steps["n"] == 6:  # 4 steps per epoch
            raise KeyboardInterrupt

    store = Store(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, dataset=data, store=store, model_factory=small_mlp, progress=die_mid_epoch_2)
    run = train(cfg, dataset=data, store=store, model_factory=small_mlp)
    assert run.status == "done"
    for (k, a), b in zip(run.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h["train_loss"] for h in run.history] == [h["train_loss"] for h in reference.history]


def test_methods_wrap_any_registered_optimizer():
    data = make_tiny(n_train=100, n_test=20)
    for optimizer in ("sgd", "lamb"):
        cfg = TINY.replace(epochs=1, method="sam", optimizer=optimizer)
        run = train(cfg, dataset=data, model_factory=small_mlp)
        assert run.status == "done"


# ---------------------------------------------------------------- plain: bf16 autocast


def _plain_step_once(autocast):
    """One plain SGD step of a float32 BN MLP; the dtypes its Linear layers computed in."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    seen = []
    for m in model:
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x, y = _data()
    opt = _sgd(model)
    step = make_step(TrainConfig(method_args=(("autocast", autocast),)))
    loss = step(model, opt, x.float(), y)
    return model, loss, seen


def test_plain_autocast_bf16_runs_the_products_in_bf16_and_keeps_float32_state():
    model, loss, seen = _plain_step_once("bf16")
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert loss.dtype == torch.float32 and loss.requires_grad is False  # the loss is reduced in float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref_model, ref_loss, ref_seen = _plain_step_once("none")
    assert ref_seen == [torch.float32, torch.float32]
    # bf16 rounds the inputs of each product to 8 bits of mantissa: close, but not equal
    assert float(loss) == pytest.approx(float(ref_loss), rel=2e-2)
    w, w_ref = model[0].weight, ref_model[0].weight
    assert not torch.equal(w, w_ref) and torch.allclose(w, w_ref, atol=5e-3)


def test_plain_autocast_is_part_of_the_run_identity(tiny):
    cfg = TrainConfig(net="small", dataset="tiny", batch_size=50, epochs=1)
    bf16 = cfg.replace(method_args=(("autocast", "bf16"),))
    assert bf16.hash() != cfg.hash()
    run = train(bf16, dataset=tiny, model_factory=small_mlp)
    ref = train(cfg, dataset=tiny, model_factory=small_mlp)
    assert run.status == "done" and math.isfinite(run.final["train_loss"])
    assert run.final["train_loss"] == pytest.approx(ref.final["train_loss"], rel=5e-2)
