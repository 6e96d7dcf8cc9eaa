"""``--profile`` (torch profiler trace and table) and ``--vectorize`` from the library and the CLI."""

import json

import pytest

from sharpminima.cli.app import main
from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.train.profile import profile_training
from sm_testing import make_tiny, small_mlp

TRAIN = ["train", "--net", "f1", "--dataset", "synthetic", "--train-limit", "400", "--test-limit", "100",
         "--epochs", "1", "--batch-size", "100"]


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_profile_writes_a_trace_and_a_table_of_top_ops(tmp_path):
    cfg = TrainConfig(net="f1", dataset="tiny", batch_size=64)
    result = profile_training(cfg, tmp_path / "sub" / "prof.json", dataset=make_tiny(), steps=3, warmup=1,
                              model_factory=small_mlp)
    assert result.trace == tmp_path / "sub" / "prof.json" and result.table == tmp_path / "sub" / "prof.md"
    trace = json.loads(result.trace.read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"train_step", "aten::addmm", "aten::native_batch_norm"} <= names
    assert sum(n.startswith("Optimizer.step") for n in names if n) >= 1
    table = result.table.read_text()
    assert table.startswith("# Training profile: f1, batch 64, adam")
    assert "| operator | calls | self CPU ms |" in table and "`aten::addmm`" in table
    assert result.steps == 3 and result.seconds > 0 and len(result.top_ops) > 3
    top = [t for _, t in result.top_ops]
    assert top == sorted(top, reverse=True)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "profile steps must be a positive integer, got 0"),
    ({"warmup": -1}, "warm-up steps must be a nonnegative integer, got -1"),
])
def test_profile_rejects_bad_step_counts(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        profile_training(TrainConfig(dataset="tiny"), tmp_path / "p", dataset=make_tiny(), **kwargs)


def test_profile_rejects_a_batch_larger_than_the_data(tmp_path):
    with pytest.raises(ConfigError, match="batch size 1000 exceeds the 600 training samples"):
        profile_training(TrainConfig(dataset="tiny", batch_size=1000), tmp_path / "p", dataset=make_tiny())


def test_cli_profile(capsys, tmp_path):
    stem = tmp_path / "prof"
    code, out, _ = run_cli(capsys, *TRAIN, "--profile", str(stem), "--profile-steps", "2", "--json",
                           "--store", str(tmp_path / "store"))
    assert code == 0
    result = json.loads(out)
    assert result["trace"] == f"{stem}.json" and result["table"] == f"{stem}.md" and result["steps"] == 2
    assert (tmp_path / "prof.json").exists() and "aten::" in (tmp_path / "prof.md").read_text()
    assert not (tmp_path / "store").exists()  # profiling records no run


def test_cli_vectorized_trials_are_the_sequential_runs(capsys, tmp_path):
    store = ["--store", str(tmp_path)]
    code, out, _ = run_cli(capsys, *TRAIN, "--optimizer", "sgd", "--lr", "0.01", "--trials", "2",
                           "--vectorize", "--json", *store)
    assert code == 0
    vec = json.loads(out)
    assert [r["seed"] for r in vec["runs"]] == [0, 1] and vec["stats"]["test_acc"]["n"] == 2
    ids = {r["run_id"] for r in vec["runs"]}
    code, out, _ = run_cli(capsys, *TRAIN, "--optimizer", "sgd", "--lr", "0.01", "--trials", "2", *store)
    assert code == 0 and all(i in out for i in ids)  # the sequential command finds them stored
    code, out, _ = run_cli(capsys, "runs", "list", *store, "--json")
    assert {r["run_id"] for r in json.loads(out)} == ids
