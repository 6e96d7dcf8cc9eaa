import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _resume_worker import CONFIG

from sharpminima.errors import StoreError
from sharpminima.store import Store
from sharpminima.train import train
from sm_testing import small_mlp

WORKER = Path(__file__).with_name("_resume_worker.py")


def _run_worker(store_dir, mode, at):
    return subprocess.run([sys.executable, str(WORKER), str(store_dir), mode, str(at)],
                          capture_output=True, text=True, timeout=300)


def _final(store_dir, tiny):
    return train(CONFIG, dataset=tiny, store=Store(store_dir), model_factory=small_mlp)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from sm_testing import make_tiny

    root = tmp_path_factory.mktemp("ref")
    run = train(CONFIG, dataset=make_tiny(), store=Store(root), model_factory=small_mlp)
    return run


# 12 steps per epoch: step 30 is mid-epoch 3; replace 7 is inside the checkpoints of epoch 2;
# replace 1 and 2 are the initial weights' tensor file and sidecar (killed before it: never committed)
@pytest.mark.parametrize(("mode", "at"), [("step", 30), ("step", 13), ("replace", 7), ("replace", 8),
                                          ("replace", 1), ("replace", 2)])
def test_killed_run_resumes_to_identical_weights(tmp_path, tiny, reference, mode, at):
    proc = _run_worker(tmp_path, mode, at)
    assert proc.returncode == -9, proc.stderr
    store = Store(tmp_path)
    assert store.get_run(reference.id).status in ("pending", "running")  # killed before or in training
    run = _final(tmp_path, tiny)
    assert run.status == "done"
    assert not list(tmp_path.rglob("*.tmp")), "a killed write's temp file was left behind"
    for (k, a), b in zip(run.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h["epoch"] for h in run.history] == list(range(1, 7))
    assert [h["train_loss"] for h in run.history] == [h["train_loss"] for h in reference.history]


def test_done_config_is_reused_not_retrained(tmp_path, tiny):
    events = []
    first = train(CONFIG.replace(epochs=2), dataset=tiny, store=Store(tmp_path), model_factory=small_mlp)
    again = train(CONFIG.replace(epochs=2), dataset=tiny, store=Store(tmp_path), model_factory=small_mlp,
                  progress=lambda e, i: events.append(e))
    assert events == []
    assert again.id == first.id and again.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                  again.model.state_dict().values(), strict=True))
    assert all(torch.equal(first.init_state[k], again.init_state[k]) for k in first.init_state)
    record = Store(tmp_path).get_run(first.id)
    assert record.status == "done" and record.summary["epochs"] == 2


def test_warm_start_from_a_saved_epoch(tmp_path, tiny):
    store = Store(tmp_path)
    sb = train(CONFIG.replace(epochs=3), dataset=tiny, store=store, model_factory=small_mlp)
    assert (store.run_dir(sb.id) / "epoch_0002.safetensors").exists()
    warm = CONFIG.replace(batch_size=300, epochs=1, init_from=f"{sb.id}@2", save_every_epoch=False)
    run = train(warm, dataset=tiny, store=store, model_factory=small_mlp)
    from sharpminima.store import load_checkpoint, unflatten_state

    epoch2 = unflatten_state(*load_checkpoint(store.run_dir(sb.id) / "epoch_0002.safetensors"))["model"]
    assert all(torch.equal(run.init_state[k], epoch2[k]) for k in epoch2)
    zero = train(warm.replace(init_from=f"{sb.id}@0"), dataset=tiny, store=store, model_factory=small_mlp)
    assert all(torch.equal(zero.init_state[k], sb.init_state[k]) for k in sb.init_state)


def test_warm_start_errors(tmp_path, tiny):
    store = Store(tmp_path)
    sb = train(CONFIG.replace(epochs=1, save_every_epoch=False), dataset=tiny, store=store,
               model_factory=small_mlp)
    with pytest.raises(StoreError, match="has no saved weights for epoch_0001"):
        train(CONFIG.replace(init_from=f"{sb.id}@1"), dataset=tiny, store=store, model_factory=small_mlp)
    with pytest.raises(StoreError, match="needs a run store"):
        train(CONFIG.replace(init_from=f"{sb.id}@1"), dataset=tiny, model_factory=small_mlp)


def test_diverged_run_is_stored_as_such(tmp_path, tiny):
    def no_bn():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 4))

    cfg = CONFIG.replace(optimizer="sgd", lr=1e20, momentum=0.0, epochs=4)
    run = train(cfg, dataset=tiny, store=Store(tmp_path), model_factory=no_bn)
    record = Store(tmp_path).get_run(run.id)
    assert record.status == "diverged" and "lower the learning rate" in record.message


def test_failure_marks_run_failed(tmp_path, tiny):
    def boom(event, info):
        if event == "epoch":
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        train(CONFIG, dataset=tiny, store=Store(tmp_path), model_factory=small_mlp, progress=boom)
    record = Store(tmp_path).list_runs()[0]
    assert record.status == "failed" and "disk on fire" in record.message
    run = train(CONFIG, dataset=tiny, store=Store(tmp_path), model_factory=small_mlp)
    assert run.status == "done" and run.epochs == 6
