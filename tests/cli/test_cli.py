import json

import pytest

from sharpminima.cli.app import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


TRAIN = ["train", "--net", "f1", "--dataset", "synthetic", "--train-limit", "400", "--test-limit", "100",
         "--epochs", "1", "--batch-size", "100"]


def test_train_json_and_runs_list(capsys, tmp_path):
    store = ["--store", str(tmp_path)]
    code, out, _ = run_cli(capsys, *TRAIN, *store, "--json")
    assert code == 0
    result = json.loads(out)
    for key in ("run_id", "status", "train_acc", "test_acc", "train_loss", "test_loss"):
        assert key in result
    assert result["status"] == "done" and result["batch_size"] == 100
    code, out, _ = run_cli(capsys, "runs", "list", *store, "--json")
    rows = json.loads(out)
    assert code == 0 and [r["run_id"] for r in rows] == [result["run_id"]]
    assert rows[0]["test_acc"] == pytest.approx(result["test_acc"])
    code, out, _ = run_cli(capsys, "runs", "show", result["run_id"][:6], *store, "--json")
    shown = json.loads(out)
    assert code == 0 and len(shown["epochs"]) == 1 and shown["config"]["batch_size"] == 100
    code, out, _ = run_cli(capsys, "runs", "list", *store)
    assert result["run_id"] in out and "done" in out


def test_regime_sets_batch_size_and_store_env(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPMINIMA_STORE", str(tmp_path / "env-store"))
    code, out, _ = run_cli(capsys, *TRAIN, "--regime", "lb", "--json")
    assert code == 0 and json.loads(out)["batch_size"] == 40  # 10% of 400
    assert (tmp_path / "env-store" / "store.sqlite").exists()


def test_trials_print_mean_and_std(capsys, tmp_path):
    code, out, _ = run_cli(capsys, *TRAIN, "--trials", "2", "--store", str(tmp_path), "--json")
    result = json.loads(out)
    assert code == 0 and [r["seed"] for r in result["runs"]] == [0, 1]
    assert result["stats"]["test_acc"]["n"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--net", "f9", "--dataset", "synthetic"], "unknown network 'f9'"),
        (["train", "--dataset", "synthetic", "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["train", "--dataset", "synthetic", "--regime", "xl"], "unknown regime"),
        (["train", "--dataset", "synthetic", "--trials", "0"], "--trials must be a positive integer"),
        (["train", "--dataset", "synthetic", "--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["data", "fetch", "cifar10"], "CIFAR-10"),
        (["data", "fetch", "imagenet"], "imagenet"),
        (["runs", "show", "nosuchrun"], "no run"),
        (["report", "--out", "/nonexistent/dir"], "no results.json"),
        (["reproduce", "--preset", "huge"], "unknown preset 'huge'"),
        (["reproduce", "table9"], "unknown experiment 'table9'"),
        (["reproduce", "--set", "colour=red"], "unknown preset field 'colour'"),
        (["reproduce", "--set", "sweep_epochs=many"], "takes int values"),
        (["reproduce", "--set", "inits=default"], "takes pairs"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, tmp_path, args, message):
    code, _, err = run_cli(capsys, *args, "--store", str(tmp_path)) if args[0] in ("train", "runs") \
        else run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_debug_shows_traceback(capsys):
    code, _, err = run_cli(capsys, "--debug", "train", "--net", "f9", "--dataset", "synthetic")
    assert code == 2 and "Traceback" in err and "unknown network" in err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("sharpminima ")


def test_method_schedule_augment_and_init_options_reach_the_config(capsys, tmp_path):
    store = ["--store", str(tmp_path)]
    code, out, err = run_cli(
        capsys, *TRAIN, *store, "--json", "--method", "sam", "--method-arg", "rho=0.1",
        "--optimizer", "lars", "--optimizer-arg", "trust_coefficient=0.01",
        "--optimizer-arg", "exclude_1d=false",
        "--lr", "1", "--batch-schedule", "step", "--batch-schedule-arg", "every=1",
        "--lr-schedule", "sqrt", "--lr-schedule-arg", "warmup_steps=3", "--augment", "paper",
        "--augment-arg", "strength=0.5", "--init", "orthogonal", "--init-scale", "0.5",
    )
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    code, out, _ = run_cli(capsys, "runs", "show", run_id, *store, "--json")
    cfg = json.loads(out)["config"]
    assert cfg["method"] == "sam" and cfg["method_args"] == [["rho", 0.1]]
    assert cfg["optimizer_args"] == [["exclude_1d", False], ["trust_coefficient", 0.01]]
    assert cfg["batch_schedule_args"] == [["every", 1]] and cfg["lr_schedule"] == "sqrt"
    assert cfg["augment"] == "paper" and cfg["augment_args"] == [["strength", 0.5]]
    assert cfg["init"] == "orthogonal" and cfg["init_scale"] == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method-arg", "rho"], "--method-arg takes NAME=VALUE"),
        (["--method", "sam", "--method-arg", "bogus=1"], "unknown option"),
        (["--method", "nope"], "unknown training method 'nope'"),
        (["--batch-schedule", "nope"], "nope"),
    ],
)
def test_bad_method_options_are_one_line_errors(capsys, tmp_path, args, message):
    code, out, err = run_cli(capsys, *TRAIN, "--store", str(tmp_path), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_reproduce_set_overrides_preset_fields(capsys, tmp_path):
    out = tmp_path / "o"
    code, stdout, err = run_cli(
        capsys, "--quiet", "reproduce", "table2", "--store", str(tmp_path / "s"), "--out", str(out),
        "--set", "dataset=synthetic", "--set", "trials=1", "--set", "sb_epochs=1",
        "--set", "lb_epochs=1", "--set", "eps=1e-3,5e-4", "--set", "batch_sizes=64", "--json",
    )
    assert code == 0, err
    preset = json.loads(stdout)["preset"]
    assert preset["dataset"] == "synthetic" and preset["trials"] == 1
    assert preset["eps"] == [1e-3, 5e-4] and preset["batch_sizes"] == [64]
    assert json.loads(stdout)["experiments"]["table2"]["f1"]["sb"]["epochs"] == [1]
