import math

import pytest
import torch

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.train import batch_indices, make_optimizer, make_step, mean_std, train, train_trials
from sharpminima.train.loop import StopState
from sm_testing import small_mlp

CFG = TrainConfig(net="f1", dataset="tiny", batch_size=64, epochs=3)


def _weights(run):
    return [t.clone() for t in run.model.state_dict().values()]


def test_same_seed_same_weights_different_seed_different(tiny):
    a, b = (
        train(CFG, dataset=tiny, model_factory=small_mlp),
        train(CFG, dataset=tiny, model_factory=small_mlp),
    )
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    c = train(CFG.replace(seed=1), dataset=tiny, model_factory=small_mlp)
    assert not torch.equal(_weights(a)[0], _weights(c)[0])


def test_training_learns_and_records_every_epoch(tiny):
    run = train(CFG.replace(epochs=5), dataset=tiny)
    assert run.status == "done" and run.epochs == 5
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4, 5]
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.final["train_acc"] > 60
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds", "epoch_loss"):
        assert math.isfinite(run.final[key])
    s = run.summary()
    assert s["run_id"] == CFG.replace(epochs=5).hash()[:12]
    assert s["status"] == "done" and s["test_acc"] == run.final["test_acc"]


def test_initial_weights_are_kept(tiny):
    run = train(CFG, dataset=tiny)
    torch.manual_seed(CFG.seed)
    from sharpminima.models import build

    fresh = build("f1", tiny.input_shape, tiny.num_classes)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in run.init_state.items())


def test_training_does_not_touch_global_rng(tiny):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(CFG, dataset=tiny, model_factory=small_mlp)
    assert torch.equal(torch.rand(3), expected)


def test_batches_cover_each_sample_once():
    batches = batch_indices(1000, 256, seed=0, epoch=1, device=torch.device("cpu"))
    assert [len(b) for b in batches] == [256, 256, 256, 232]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(1000))
    other = batch_indices(1000, 256, seed=0, epoch=2, device=torch.device("cpu"))
    assert not torch.equal(torch.cat(batches), torch.cat(other))


def test_plateau_rule():
    s = StopState()
    for loss in [1.0, 0.5, 0.4999, 0.4998, 0.3]:
        s.update(loss, 1e-3)
    assert s.best == 0.3 and s.bad_epochs == 0
    s.update(0.3, 1e-3)
    s.update(0.2999, 1e-3)
    assert s.bad_epochs == 2


def test_plateau_stops_before_cap(tiny):
    # a tiny learning rate makes the loss stop improving by 10% per epoch at once
    cfg = CFG.replace(stop="plateau", epochs=50, patience=2, min_improvement=0.1, lr=1e-6)
    run = train(cfg, dataset=tiny, model_factory=small_mlp)
    assert run.status == "done" and run.epochs <= 4


def test_divergence_is_reported(tiny):
    def no_bn():  # without BatchNorm nothing stops the weights from overflowing
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
        )

    cfg = CFG.replace(optimizer="sgd", lr=1e20, momentum=0.0, epochs=5)
    run = train(cfg, dataset=tiny, model_factory=no_bn)
    assert run.status == "diverged"
    assert "lower the learning rate" in run.message
    assert mean_std([run], "test_acc")[2] == 0


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "adagrad"])
def test_optimizers_train(tiny, name):
    lr = 0.05 if name in ("sgd", "adagrad") else 1e-3
    run = train(CFG.replace(optimizer=name, lr=lr, epochs=2), dataset=tiny, model_factory=small_mlp)
    assert run.status == "done" and run.final["train_loss"] < run.history[0]["epoch_loss"] * 1.5


def test_adam_uses_paper_defaults():
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig())
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.Adam)
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.9, 0.999), 1e-8)


def test_unknown_optimizer_and_method():
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer="lion"))
    with pytest.raises(ConfigError, match="unknown training method 'magic'"):
        make_step(TrainConfig(method="magic"))


def test_batch_larger_than_data(tiny):
    with pytest.raises(ConfigError, match="exceeds the 600 training samples"):
        train(CFG.replace(batch_size=601), dataset=tiny, model_factory=small_mlp)


def test_trials_and_mean_std(tiny):
    runs = train_trials(CFG.replace(epochs=1), seeds=[0, 1, 2], dataset=tiny, model_factory=small_mlp)
    assert [r.config.seed for r in runs] == [0, 1, 2]
    mean, std, n = mean_std(runs, "test_acc")
    values = [r.final["test_acc"] for r in runs]
    assert n == 3 and mean == pytest.approx(sum(values) / 3)
    assert std == pytest.approx(torch.tensor(values).std().item())


def test_model_factory(tiny):
    def factory():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))

    run = train(CFG.replace(net="custom"), dataset=tiny, model_factory=factory)
    assert run.status == "done" and isinstance(run.model, torch.nn.Sequential)


def test_progress_events(tiny):
    events = []
    train(
        CFG.replace(epochs=2),
        dataset=tiny,
        model_factory=small_mlp,
        progress=lambda e, info: events.append(e),
    )
    assert events[0] == "start"
    assert events.count("step") == 2 * math.ceil(600 / 64)
    assert events.count("epoch") == 2
