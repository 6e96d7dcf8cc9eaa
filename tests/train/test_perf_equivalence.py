"""The fast training path against plain PyTorch (see sharpminima.train.perf).

Tolerances, float32, and why they are what they are:

* Fused Adam/AdamW against torch's unfused update, fed the same gradients: every weight
  within ``1e-7 + 1e-6 |w|`` after 5 steps (the kernels round differently in about 3% of
  the weights, by about one ulp; an update is ~lr = 1e-3, so this is 1e-4 of a step).
* A whole training step (forward, backward, update) over 20 steps on a BatchNorm MLP:
  losses within 1e-6 relative, weights within 1e-6 absolute, *except* the biases of
  Linear layers that feed a BatchNorm and that BatchNorm's running mean. BatchNorm
  subtracts the batch mean, so such a bias has zero gradient up to rounding noise
  (~1e-9), and Adam normalises that noise into steps of size ~lr: the bias random-walks
  on rounding errors in *any* implementation, the unfused one included, without changing
  the network's training output. Those are compared through the outputs instead.
* The opt-in compiled step (slow tests) against the eager one: same rule, 1e-5.
"""

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.store import flatten_state, unflatten_state
from sharpminima.train import make_optimizer, make_step, train
from sharpminima.train.perf import can_fuse
from sm_testing import make_tiny, small_mlp

COMPILED = (("compile", True),)


def _f1_sized_params(seed=0):
    torch.manual_seed(seed)
    from sharpminima.models import build

    return list(build("f1", (1, 28, 28), 10).parameters())


@pytest.mark.parametrize(("name", "cls", "weight_decay"), [
    ("adam", torch.optim.Adam, 0.0), ("adam", torch.optim.Adam, 0.01),
    ("adamw", torch.optim.AdamW, 0.01),
])
def test_fused_update_matches_unfused_torch_update(name, cls, weight_decay):
    fast, ref = _f1_sized_params(), _f1_sized_params()
    cfg = TrainConfig(optimizer=name, weight_decay=weight_decay)
    opt_fast = make_optimizer(fast, cfg)
    opt_ref = cls(ref, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=weight_decay)
    assert type(opt_fast) is cls and opt_fast.param_groups[0]["fused"] is True
    assert opt_ref.param_groups[0]["fused"] is None  # the reference really is unfused
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(fast, ref, strict=True):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt_fast.step()
        opt_ref.step()
    for a, b, start in zip(fast, ref, _f1_sized_params(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, start)  # the weights did move


def _plain_torch_step(model, opt, xb, yb):
    opt.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    return loss.detach()


def _train_steps(step, make_opt, steps=20, model_factory=small_mlp):
    data = make_tiny()
    torch.manual_seed(0)
    model = model_factory()
    opt = make_opt(model)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        idx = torch.randperm(data.num_train, generator=g)[:64]
        losses.append(step(model, opt, data.x_train[idx], data.y_train[idx]))
    return model, torch.stack(losses)


def _pre_bn_names(model):
    """State-dict keys of biases feeding a BatchNorm and of BatchNorms' running means."""
    names, mods = set(), list(model.named_modules())
    for (name, mod), (bn_name, nxt) in zip(mods, mods[1:], strict=False):
        if isinstance(mod, nn.Linear) and isinstance(nxt, nn.BatchNorm1d):
            names |= {f"{name}.bias", f"{bn_name}.running_mean"}
    return names


def _assert_same_training(model_a, losses_a, model_b, losses_b, tol):
    torch.testing.assert_close(losses_a, losses_b, rtol=tol, atol=0)
    loose = _pre_bn_names(model_a)
    assert loose, "the test model should have a Linear -> BatchNorm pair"
    for (k, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        if k not in loose:
            torch.testing.assert_close(a, b, rtol=0, atol=tol, msg=k)
    x = make_tiny().x_test
    # batch statistics, where the loose biases cancel; on copies, as a training-mode
    # forward would update the models' running statistics
    copy_a, copy_b = copy.deepcopy(model_a).train(), copy.deepcopy(model_b).train()
    with torch.no_grad():
        torch.testing.assert_close(copy_a(x), copy_b(x), rtol=tol, atol=tol)


def test_default_step_matches_plain_pytorch_training():
    cfg = TrainConfig(batch_size=64)
    fast = _train_steps(make_step(cfg), lambda m: make_optimizer(m.parameters(), cfg))
    ref = _train_steps(_plain_torch_step, lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
    _assert_same_training(*fast, *ref, tol=1e-6)


def test_default_step_is_bit_reproducible():
    cfg = TrainConfig(batch_size=64)
    a = _train_steps(make_step(cfg), lambda m: make_optimizer(m.parameters(), cfg))
    b = _train_steps(make_step(cfg), lambda m: make_optimizer(m.parameters(), cfg))
    assert torch.equal(a[1], b[1])
    assert all(torch.equal(x, y) for x, y in zip(a[0].state_dict().values(),
                                                 b[0].state_dict().values(), strict=True))


def test_fused_flag_survives_a_checkpoint():
    model = small_mlp()
    opt = make_optimizer(model.parameters(), TrainConfig())
    model(torch.rand(8, 64)).sum().backward()
    opt.step()
    state = unflatten_state(*flatten_state({"optimizer": opt.state_dict()}))
    again = make_optimizer(model.parameters(), TrainConfig())
    again.load_state_dict(state["optimizer"])
    assert again.param_groups[0]["fused"] is True


def test_can_fuse():
    w = nn.Parameter(torch.zeros(3))
    assert can_fuse([w]) and can_fuse([{"params": [w]}]) and can_fuse([{"params": w}])
    assert not can_fuse([])
    assert not can_fuse([torch.zeros(3, dtype=torch.int64)])
    assert not can_fuse([w, torch.zeros(3, device="meta")])


def test_unfusable_params_fall_back_to_unfused_adam():
    opt = make_optimizer([torch.zeros(3, dtype=torch.float64, device="meta")], TrainConfig())
    assert opt.param_groups[0]["fused"] is None


def test_plain_method_options_are_checked():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['compiled'\] for method 'plain'"):
        make_step(TrainConfig(method_args=(("compiled", True),)))
    with pytest.raises(ConfigError, match="'compile' must be true or false, got 'yes'"):
        make_step(TrainConfig(method_args=(("compile", "yes"),)))


def test_compile_changes_the_run_identity():
    assert TrainConfig().hash() != TrainConfig(method_args=COMPILED).hash()


@pytest.mark.slow
def test_compiled_step_matches_eager_step():
    cfg = TrainConfig(batch_size=64)
    make_opt = lambda m: make_optimizer(m.parameters(), cfg)  # noqa: E731
    compiled = _train_steps(make_step(cfg.replace(method_args=COMPILED)), make_opt)
    eager = _train_steps(make_step(cfg), make_opt)
    _assert_same_training(*compiled, *eager, tol=1e-5)
    again = _train_steps(make_step(cfg.replace(method_args=COMPILED)), make_opt)
    assert torch.equal(compiled[1], again[1])
    for (k, x), y in zip(compiled[0].state_dict().items(), again[0].state_dict().values(),
                         strict=True):
        assert torch.equal(x, y), k


_KILLED_WORKER = """
import os, sys
sys.path.insert(0, {tests!r})
from sm_testing import make_tiny, small_mlp
from sharpminima.config import TrainConfig
from sharpminima.store import Store
from sharpminima.train import train
config = TrainConfig.from_dict({config!r})
steps = 0
def progress(event, info):
    global steps
    steps += event == "step"
    if steps == 15:  # mid-epoch 2 (10 steps per epoch)
        os.kill(os.getpid(), 9)
train(config, dataset=make_tiny(), store=Store(sys.argv[1]), model_factory=small_mlp,
      progress=progress)
"""


@pytest.mark.slow
def test_compiled_run_resumes_to_identical_weights(tmp_path):
    from pathlib import Path

    from sharpminima.store import Store

    config = TrainConfig(net="f1", dataset="tiny", batch_size=64, epochs=3, method_args=COMPILED)
    reference = train(config, dataset=make_tiny(), store=Store(tmp_path / "ref"),
                      model_factory=small_mlp)
    script = _KILLED_WORKER.format(tests=str(Path(__file__).parents[1]), config=config.to_dict())
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    run = train(config, dataset=make_tiny(), store=Store(tmp_path / "run"), model_factory=small_mlp)
    assert run.status == "done"
    for (k, a), b in zip(run.model.state_dict().items(), reference.model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
