"""Kill -9 mid-run, resume: bit-identical weights with non-constant schedules and augmentation."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _resume_worker import CONFIGS

from sharpminima.store import Store
from sharpminima.train import train
from sm_testing import make_tiny, small_mlp

WORKER = Path(__file__).with_name("_resume_worker.py")


@pytest.mark.parametrize(("variant", "epoch"), [("scheduled", 3), ("scheduled", 5), ("adaptive", 4)])
def test_scheduled_run_killed_and_resumed_is_bit_identical(tmp_path, variant, epoch):
    config = CONFIGS[variant]
    reference = train(config, dataset=make_tiny(), store=Store(tmp_path / "ref"), model_factory=small_mlp)
    before, end = reference.history[epoch - 2]["steps"], reference.history[epoch - 1]["steps"]
    at = before + max(1, (end - before) // 2)  # die in the middle of `epoch`
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "killed"), "step", str(at), variant],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr
    assert len(Store(tmp_path / "killed").epochs(reference.id)) >= 1  # killed after an epoch
    run = train(config, dataset=make_tiny(), store=Store(tmp_path / "killed"), model_factory=small_mlp)
    for (k, a), b in zip(run.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    keys = ("train_loss", "batch_size", "steps", "lr_end")
    assert [[h[k] for k in keys] for h in run.history] == [[h[k] for k in keys] for h in reference.history]
    if variant == "scheduled":
        assert [h["batch_size"] for h in run.history] == [50, 50, 100, 100, 200, 200]
