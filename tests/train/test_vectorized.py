"""Vectorised trials against K sequential ``train()`` runs (the reference path).

Tolerances, float32, 2 epochs, and why (see sharpminima.train.vectorized):

* the stacked optimizer update is bit-identical to per-trial optimizers fed the same
  gradients (AdamW, SGD with momentum, Adagrad; fused Adam with weight decay within an ulp,
  its vectorised body and scalar tail rounding apart);
* initial weights and the data order are bit-identical;
* whole training: every weight and buffer within ``1e-5`` of its tensor's largest entry
  (measured ~1e-7: vmap's batched products round differently from single ones), except,
  under Adam, the biases feeding a BatchNorm and that BatchNorm's running mean, which carry
  no signal and random-walk on rounding noise in any implementation; training-mode
  outputs, where those biases cancel, within ``1e-5``.
"""

import copy
import logging

import pytest
import torch
from torch import nn

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.store import Store
from sharpminima.train import train, train_trials
from sharpminima.train.optim import make_optimizer
from sharpminima.train.perf import cuda_flags_restored, prepare
from sharpminima.train.vectorized import fallback_reason, train_vectorized
from sm_testing import make_tiny, small_mlp

CFG = TrainConfig(net="f1", dataset="tiny", batch_size=64, epochs=2)
SEEDS = [0, 1, 2]
TOL = 1e-5


def _pre_bn_names(model):
    names, mods = set(), list(model.named_modules())
    for (name, mod), (bn_name, nxt) in zip(mods, mods[1:], strict=False):
        if isinstance(mod, nn.Linear) and isinstance(nxt, nn.BatchNorm1d):
            names |= {f"{name}.bias", f"{bn_name}.running_mean"}
    return names


def _assert_close_runs(vec, seq, loose=frozenset()):
    assert vec.id == seq.id and vec.config == seq.config and vec.status == seq.status == "done"
    assert [h["epoch"] for h in vec.history] == [h["epoch"] for h in seq.history]
    for hv, hs in zip(vec.history, seq.history, strict=True):
        assert hv.keys() == hs.keys()
        for key in ("batch_size", "batch_size_mean", "steps", "lr_end"):
            assert hv.get(key) == hs.get(key), key
    for k, v in seq.model.state_dict().items():
        w = vec.model.state_dict()[k]
        if not v.is_floating_point():
            assert torch.equal(v, w), k
        elif k not in loose:
            assert float((w - v).abs().max()) <= TOL * float(v.abs().max()), k
    x = make_tiny().x_test
    a, b = copy.deepcopy(vec.model).train(), copy.deepcopy(seq.model).train()
    with torch.no_grad():  # the same dropout masks in both calls, if the net has dropout
        torch.manual_seed(0)
        out_a = a(x)
        torch.manual_seed(0)
        torch.testing.assert_close(out_a, b(x), rtol=TOL, atol=TOL)
    for hv, hs in zip(vec.history, seq.history, strict=True):
        assert hv["epoch_loss"] == pytest.approx(hs["epoch_loss"], rel=TOL)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.01), ("adam", 1e-3)])
def test_vectorised_trials_equal_sequential_runs(tiny, optimizer, lr):
    cfg = CFG.replace(optimizer=optimizer, lr=lr)
    vec = train_vectorized(cfg, SEEDS, dataset=tiny, model_factory=small_mlp)
    seq = [train(cfg.replace(seed=s), dataset=tiny, model_factory=small_mlp) for s in SEEDS]
    loose = _pre_bn_names(seq[0].model) if optimizer == "adam" else frozenset()
    for v, s in zip(vec, seq, strict=True):
        _assert_close_runs(v, s, loose)
        assert all(torch.equal(v.init_state[k], s.init_state[k]) for k in s.init_state)
        # eval-mode metrics use the running means, loose under Adam (see the module docstring)
        rel = 1e-5 if optimizer == "sgd" else 1e-2
        assert v.final["train_loss"] == pytest.approx(s.final["train_loss"], rel=rel)


def test_lr_schedules_and_init_options_are_vectorised(tiny):
    cfg = CFG.replace(optimizer="sgd", lr=0.02, epochs=3, lr_schedule="step",
                      lr_schedule_args=(("milestones", (1,)), ("warmup_steps", 4)), init_scale=0.5)
    assert fallback_reason(cfg, small_mlp()) is None
    vec = train_vectorized(cfg, SEEDS[:2], dataset=tiny, model_factory=small_mlp)
    seq = [train(cfg.replace(seed=s), dataset=tiny, model_factory=small_mlp) for s in SEEDS[:2]]
    for v, s in zip(vec, seq, strict=True):
        _assert_close_runs(v, s)
        assert all(torch.equal(v.init_state[k], s.init_state[k]) for k in s.init_state)
    assert vec[0].history[0]["lr_end"] != vec[0].history[-1]["lr_end"]


def test_batch_schedules_augmentation_and_warm_starts_are_the_loops(tiny, tmp_path):
    # the one loop supplies them to both paths: nothing for the vectorised path to do
    stores = [Store(tmp_path / "vec"), Store(tmp_path / "seq")]
    first = [train(CFG.replace(optimizer="sgd", lr=0.02, epochs=1), dataset=tiny, store=st,
                   model_factory=small_mlp) for st in stores]  # the same run in both stores
    cfg = CFG.replace(optimizer="sgd", lr=0.02, epochs=3, batch_schedule="step",
                      batch_schedule_args=(("every", 1), ("factor", 2)), init_from=first[0].id,
                      augment="paper", augment_args=(("strength", 0.5),))
    assert fallback_reason(cfg, small_mlp()) is None
    vec = train_vectorized(cfg, SEEDS[:2], dataset=tiny, store=stores[0], model_factory=small_mlp)
    seq = [train(cfg.replace(seed=s), dataset=tiny, model_factory=small_mlp, store=stores[1])
           for s in SEEDS[:2]]
    for v, s in zip(vec, seq, strict=True):
        _assert_close_runs(v, s)
    assert [h["batch_size"] for h in vec[0].history] == [64, 128, 256]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "nesterov", "adagrad"])
def test_stacked_update_equals_per_trial_optimizers(name):
    cfg = TrainConfig(optimizer=name, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    trials = [[torch.randn(33, 7, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]
              for _ in range(3)]
    stacked = [torch.stack([t[i].detach() for t in trials]).requires_grad_() for i in range(2)]
    opts = [make_optimizer(t, cfg) for t in trials]
    opt = make_optimizer(stacked, cfg)
    for _ in range(4):
        for t in trials:
            for p in t:
                scale = 10.0 ** torch.randint(-10, 0, p.shape, generator=g)  # tiny to large gradients
                p.grad = torch.randn(p.shape, generator=g) * scale
        for i, p in enumerate(stacked):
            p.grad = torch.stack([t[i].grad for t in trials])
        for o in opts:
            o.step()
        opt.step()
    for k, t in enumerate(trials):
        for i, p in enumerate(t):
            if name == "adam":  # fused Adam with weight decay: vector body and tail round apart
                torch.testing.assert_close(stacked[i][k], p, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(stacked[i][k], p)


def test_runs_are_stored_like_sequential_ones_and_reused(tiny, tmp_path):
    store = Store(tmp_path / "store")
    cfg = CFG.replace(optimizer="sgd", lr=0.01)
    vec = train_trials(cfg, SEEDS, vectorize=True, dataset=tiny, store=store, model_factory=small_mlp)
    for run in vec:
        assert run.id == store.get_run(run.id).id and store.get_run(run.id).status == "done"
        assert len(store.epochs(run.id)) == 2
        files = {p.name for p in (tmp_path / "store").rglob("*.safetensors") if run.id in str(p)}
        assert {"init.safetensors", "final.safetensors", "last_0.safetensors", "last_1.safetensors"} <= files
    again = train_trials(cfg, SEEDS, dataset=tiny, store=store, model_factory=small_mlp)  # sequential
    for v, s in zip(vec, again, strict=True):
        assert v.id == s.id and v.history == s.history
        assert all(torch.equal(a, b) for a, b in zip(v.model.state_dict().values(),
                                                     s.model.state_dict().values(), strict=True))


def test_interrupted_group_resumes_per_trial(tiny, tmp_path):
    cfg = CFG.replace(optimizer="sgd", lr=0.01, epochs=3)
    store = Store(tmp_path / "store")
    epochs_seen = []

    def stop_after_first_epoch(event, info):
        if event == "epoch":
            epochs_seen.append(info["epoch"])
            if len(epochs_seen) == 1:  # trial 0 has saved epoch 1; trials 1 and 2 have not
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vectorized(cfg, SEEDS, dataset=tiny, store=store, model_factory=small_mlp,
                         progress=stop_after_first_epoch)
    ids = [cfg.replace(seed=s).hash()[:12] for s in SEEDS]
    assert [store.get_run(i).status for i in ids] == ["interrupted"] * 3  # Ctrl-C: resumable
    resumed = train_vectorized(cfg, SEEDS, dataset=tiny, store=store, model_factory=small_mlp)
    seq = [train(cfg.replace(seed=s), dataset=tiny, model_factory=small_mlp) for s in SEEDS]
    for v, s in zip(resumed, seq, strict=True):
        _assert_close_runs(v, s)
        assert store.get_run(v.id).status == "done"


def test_trials_that_stop_early_leave_the_group(tiny):
    # plateau with patience 1: seeds stop at different epochs; the rest train on
    cfg = CFG.replace(optimizer="sgd", lr=0.05, epochs=6, stop="plateau", patience=1, min_improvement=0.15)
    vec = train_vectorized(cfg, [0, 1, 2, 3], dataset=tiny, model_factory=small_mlp)
    seq = [train(cfg.replace(seed=s), dataset=tiny, model_factory=small_mlp) for s in [0, 1, 2, 3]]
    assert len({r.epochs for r in seq}) > 1, "the test needs trials that stop at different epochs"
    for v, s in zip(vec, seq, strict=True):
        _assert_close_runs(v, s)


def _no_bn():  # without BatchNorm nothing stops the weights from overflowing
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def test_diverging_trials_are_reported(tiny):
    cfg = CFG.replace(optimizer="sgd", lr=1e20, momentum=0.0, epochs=2)
    runs = train_vectorized(cfg, [0, 1], dataset=tiny, model_factory=_no_bn)
    assert [r.status for r in runs] == ["diverged", "diverged"]
    assert "lower the learning rate" in runs[0].message and runs[0].epochs == 1


def _dropout_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))


def _dropout2d_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout2d(0.5), nn.Flatten(), nn.Linear(256, 4))


class _SharedDropout(nn.Module):
    """One nn.Dropout called twice per forward: its masks cannot ride in as one buffer."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.drop = nn.Linear(64, 16), nn.Linear(16, 4), nn.Dropout(0.5)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.drop(self.a(x.flatten(1))))))


@pytest.mark.parametrize(("cfg", "factory", "reason"), [
    (CFG, _dropout2d_net, "the network has Dropout2d"),
    (CFG.replace(optimizer="lion-like"), small_mlp, "not known to update elementwise"),
    (CFG.replace(method_args=(("compile", True),)), small_mlp, "is not vectorised"),
    (CFG.replace(batch_schedule="adaptive"), small_mlp, "plans each run from its own state"),
    (CFG.replace(loss="sm_testing:mean_abs_loss"), small_mlp, "is not known to run under vmap"),
])
def test_fallback_reasons(cfg, factory, reason):
    assert reason in fallback_reason(cfg, factory())
    assert fallback_reason(CFG, small_mlp()) is None


def test_a_dropout_module_called_twice_falls_back(tiny, caplog):
    assert fallback_reason(CFG, _SharedDropout()) is None  # without an input shape it cannot tell
    assert "called once per forward pass" in fallback_reason(CFG, _SharedDropout(), (1, 8, 8))
    with caplog.at_level(logging.INFO, logger="sharpminima.train.vectorized"):
        vec = train_vectorized(CFG.replace(epochs=1), [0, 1], dataset=tiny, model_factory=_SharedDropout)
    assert "one at a time" in caplog.text and "called once per forward pass" in caplog.text
    seq = train(CFG.replace(epochs=1, seed=1), dataset=tiny, model_factory=_SharedDropout)
    assert all(torch.equal(a, b) for a, b in zip(vec[1].model.state_dict().values(),
                                                 seq.model.state_dict().values(), strict=True))


class _OutOfOrder(nn.Module):
    """Dropouts called in another order than they are registered, one of them in place."""

    def __init__(self):
        super().__init__()
        self.late = nn.Dropout(0.3)  # registered first, called second
        self.early = nn.Dropout(0.5, inplace=True)
        self.a, self.b = nn.Linear(64, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(self.late(torch.relu(self.early(self.a(x.flatten(1))))))


def test_drawn_masks_are_exactly_what_the_sequential_modules_drop():
    """Three steps of two trials: each mask times the dropout's input is bit for bit the
    output of the real nn.Dropout in a sequential run seeded as train() seeds it."""
    from sharpminima.train.loop import epoch_seed
    from sharpminima.train.vectorized import _Dropouts

    seeds, epoch, shape = [3, 7], 2, (5, 1, 8, 8)
    drops = _Dropouts(copy.deepcopy(_OutOfOrder()).to("meta"), torch.device("cpu"), torch.float32, False)
    with torch.random.fork_rng():
        drops.start_epoch(seeds, epoch)
        steps = [drops.masks(shape) for _ in range(3)]
        for k, seed in enumerate(seeds):
            model = _OutOfOrder().train()
            seen = {}
            for name in ("early", "late"):
                mod = getattr(model, name)
                mod.register_forward_pre_hook(lambda m, a, n=name, d=seen: d.update({n: [a[0].clone()]}))
                mod.register_forward_hook(lambda m, args, out, n=name, d=seen: d[n].append(out.clone()))
            torch.manual_seed(epoch_seed(seed, epoch))  # what train() does at the epoch's start
            inputs = torch.rand(len(steps), *shape, generator=torch.Generator().manual_seed(k))
            for masks, x_in in zip(steps, inputs, strict=True):
                with torch.no_grad():
                    model(x_in)
                for name in ("early", "late"):
                    x, out = seen[name]
                    assert torch.equal(x * masks[f"{name}.mask"][k], out), (seed, name)
    assert not torch.equal(steps[0]["early.mask"][0], steps[0]["early.mask"][1])  # each trial its own
    assert not torch.equal(steps[0]["early.mask"][0], steps[1]["early.mask"][0])  # each step new ones


def test_a_net_the_meta_probe_cannot_run_falls_back():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.drop = nn.Linear(64, 4), nn.Dropout(0.5)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            return self.drop(h) if float(h.sum()) > 0 else h  # data-dependent: no meta run

    assert "could not be traced on the meta device" in fallback_reason(CFG, Branchy(), (1, 8, 8))


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adam", 1e-3)])
def test_dropout_nets_are_vectorised_with_each_trials_own_masks(tiny, caplog, optimizer, lr):
    """Each trial draws the dropout masks its sequential run draws: with other masks the
    weights would differ by O(1) after the first step, not by rounding."""
    cfg = CFG.replace(optimizer=optimizer, lr=lr)
    with caplog.at_level(logging.INFO, logger="sharpminima.train.vectorized"):
        vec = train_vectorized(cfg, SEEDS, dataset=tiny, model_factory=_dropout_net)
    assert "one at a time" not in caplog.text
    seq = [train(cfg.replace(seed=s), dataset=tiny, model_factory=_dropout_net) for s in SEEDS]
    loose = _pre_bn_names(seq[0].model) if optimizer == "adam" else frozenset()
    for v, s in zip(vec, seq, strict=True):
        _assert_close_runs(v, s, loose)
    # the trials' masks differ from each other (each its own stream), so their runs do too
    assert not torch.allclose(vec[0].model[1].weight, vec[1].model[1].weight)


def test_trials_with_dropout_that_stop_early_keep_their_seeds(tiny):
    cfg = CFG.replace(optimizer="sgd", lr=0.05, epochs=6, stop="plateau", patience=1, min_improvement=0.1)
    vec = train_vectorized(cfg, SEEDS, dataset=tiny, model_factory=_dropout_net)
    seq = [train(cfg.replace(seed=s), dataset=tiny, model_factory=_dropout_net) for s in SEEDS]
    assert len({len(r.history) for r in seq}) > 1  # the trials stopped at different epochs
    for v, s in zip(vec, seq, strict=True):
        _assert_close_runs(v, s)


def test_the_paper_conv_net_is_vectorised(caplog):
    """C1 (conv + BatchNorm2d + two dropouts) under vmap equals its sequential runs.

    ``vmap`` turns each convolution into one grouped convolution, which rounds differently
    from K single ones: weights agree to ~1e-5 of their tensor's largest entry after 2
    epochs (bound 1e-4); different dropout masks would differ at ~1e-1.
    """
    data = make_tiny(shape=(3, 8, 8))
    cfg = TrainConfig(net="c1", dataset="tiny", batch_size=100, epochs=2, optimizer="sgd", lr=0.02)
    with caplog.at_level(logging.INFO, logger="sharpminima.train.vectorized"):
        vec = train_vectorized(cfg, [0, 1], dataset=data)
    assert "one at a time" not in caplog.text
    seq = [train(cfg.replace(seed=s), dataset=data) for s in (0, 1)]
    for v, s in zip(vec, seq, strict=True):
        assert v.id == s.id and v.status == s.status == "done"
        for name, ref in s.model.state_dict().items():
            got = v.model.state_dict()[name]
            if ref.is_floating_point():
                assert float((got - ref).abs().max()) <= 1e-4 * max(float(ref.abs().max()), 1e-12), name
            else:
                assert torch.equal(got, ref), name
        for hv, hs in zip(v.history, s.history, strict=True):
            assert hv["epoch_loss"] == pytest.approx(hs["epoch_loss"], rel=1e-4)


@pytest.mark.parametrize(("seeds", "kwargs", "match"), [
    ([], {}, "at least one seed"),
    ([0, 0], {}, r"seeds must differ, got \[0, 0\]"),
    ([0, 1], {"batch_size": 10_000}, "batch size 10000 exceeds the 600 training samples"),
])
def test_bad_input(tiny, seeds, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        train_vectorized(CFG.replace(**kwargs), seeds, dataset=tiny, model_factory=small_mlp)


# ---------------------------------------------------------------------------- GPU fast path


def test_prepare_is_a_no_op_off_cuda(tiny):
    model = small_mlp()
    precision = torch.get_float32_matmul_precision()
    assert prepare(model, tiny, torch.device("cpu")) == (model, tiny)
    assert torch.get_float32_matmul_precision() == precision


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prepare_uses_channels_last_and_tf32_on_cuda():
    from sharpminima.models import build

    dev = torch.device("cuda")
    data = make_tiny(shape=(3, 8, 8)).to(dev)
    with cuda_flags_restored():  # prepare's flags are process-wide: keep them out of later tests
        model, data = prepare(build("c1", (3, 8, 8), 4).to(dev), data, dev)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert data.x_train.is_contiguous(memory_format=torch.channels_last)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vectorised_trials_train_on_cuda():
    data = make_tiny()
    cfg = CFG.replace(optimizer="sgd", lr=0.01)
    vec = train_vectorized(cfg, SEEDS, dataset=data, device="cuda", model_factory=small_mlp)
    seq = [train(cfg.replace(seed=s), dataset=data, device="cuda", model_factory=small_mlp) for s in SEEDS]
    for v, s in zip(vec, seq, strict=True):
        assert v.final["train_loss"] == pytest.approx(s.final["train_loss"], rel=1e-3)
