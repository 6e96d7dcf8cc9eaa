"""Training on objectives other than classification: a regression with MSE, a small LM per token."""

import json
import re
import textwrap

import pytest

from sharpminima.cli.app import main
from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.store import Store
from sharpminima.train import mean_std, train, train_trials

FACTORIES = textwrap.dedent("""
    import torch
    from torch import nn

    def regression():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(120, 4, generator=g)
        w = torch.randn(4, 2, generator=g)
        y = x @ w + 0.1 * torch.randn(120, 2, generator=g)
        return x[:96], y[:96], x[96:], y[96:]

    def regressor(input_shape, num_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))

    def tokens():
        g = torch.Generator().manual_seed(0)
        seq = torch.randint(0, 6, (80, 9), generator=g)
        seq[:, 1::2] = (seq[:, 0::2][:, :4] + 1) % 6  # every other token predictable
        return {"x_train": seq[:64, :-1], "y_train": seq[:64, 1:], "x_test": seq[64:, :-1],
                "y_test": seq[64:, 1:]}

    class TinyLM(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.embed = nn.Embedding(vocab, 16)
            self.rnn = nn.GRU(16, 16, batch_first=True)
            self.head = nn.Linear(16, vocab)

        def forward(self, ids):
            return self.head(self.rnn(self.embed(ids))[0])  # (B, T, V)

    def lm(input_shape, num_classes):
        return TinyLM(num_classes)
""")


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "objective_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "objective_factories"


def test_a_regression_trains_with_mse_and_reports_no_accuracy(factories):
    cfg = TrainConfig(
        net=f"{factories}:regressor",
        dataset=f"{factories}:regression",
        loss="mse",
        batch_size=16,
        epochs=4,
        lr=1e-2,
    )
    run = train(cfg)
    losses = [h["train_loss"] for h in run.history]
    assert run.status == "done" and losses[-1] < 0.5 * losses[0]
    assert run.final["train_acc"] is None and run.final["test_acc"] is None
    assert mean_std([run], "test_acc")[2] == 0  # no trial has an accuracy to average
    assert "loss" in cfg.identity() and cfg.hash() != cfg.replace(loss="cross_entropy").hash()


def test_a_regression_is_vectorised_like_its_sequential_runs(factories):
    cfg = TrainConfig(
        net=f"{factories}:regressor",
        dataset=f"{factories}:regression",
        loss="mse",
        batch_size=16,
        epochs=2,
        lr=1e-2,
        optimizer="sgd",
    )
    vec = train_trials(cfg, [0, 1], vectorize=True)
    seq = train_trials(cfg, [0, 1])
    for v, s in zip(vec, seq, strict=True):
        assert v.final["train_loss"] == pytest.approx(s.final["train_loss"], rel=1e-5)


def test_a_language_model_trains_per_token(factories):
    cfg = TrainConfig(net=f"{factories}:lm", dataset=f"{factories}:tokens", batch_size=16, epochs=6, lr=1e-2)
    run = train(cfg)
    first, last = run.history[0], run.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["train_acc"] is not None and last["train_acc"] > first["train_acc"]  # token accuracy


def test_the_command_line_takes_net_data_and_loss_factories(factories, tmp_path, capsys):
    args = [
        "train",
        "--net",
        f"{factories}:regressor",
        "--data",
        f"{factories}:regression",
        "--loss",
        "mse",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--store",
        str(tmp_path / "store"),
        "--json",
    ]
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = json.loads(capsys.readouterr().out)
    assert exc.value.code == 0 and out["status"] == "done" and out["train_acc"] is None
    record = Store(tmp_path / "store").get_run(out["run_id"])
    assert record.config["loss"] == "mse" and record.config["dataset"] == f"{factories}:regression"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--loss", "output"], "cannot train on \\(inputs, targets\\) batches"),
        (["--loss", "hinge"], "unknown loss 'hinge'"),
        (["--data", "no_such_module_z:make"], "cannot import data factory 'no_such_module_z:make'"),
    ],
)
def test_bad_objectives_are_one_line_errors(args, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "1", "--dataset", "synthetic", *args, "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(match, err), err


def test_a_data_factory_that_returns_the_wrong_thing(tmp_path, monkeypatch):
    (tmp_path / "bad_data.py").write_text("def wrong():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="returned a int; it must return a Dataset"):
        train(TrainConfig(dataset="bad_data:wrong"))
