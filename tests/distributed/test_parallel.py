"""Two gloo processes on the CPU train, evaluate and measure as one process does.

Tolerance: final weights (and BatchNorm running statistics) agree with single-process
training within ``atol = 1e-6``, ``rtol = 1e-5`` after 12 Adam steps on batches that never
split evenly (measured: largest difference 1.1e-7; what differs is float summation order
in the BatchNorm statistics, the gradient all-reduce and the shard weighting). Losses and
sharpness agree within a relative 1e-4.
"""

from __future__ import annotations

import json
import socket

import _dist_worker as worker
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from sharpminima import distributed
from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import FunctionObjective, ModelObjective, flatten_params
from sharpminima.landscape.sharded import DistributedObjective, shard_objective
from sharpminima.landscape.sharpness import keskar_sharpness
from sharpminima.store import Store
from sharpminima.train import evaluate, train
from sharpminima.train.parallel import open_run_files, parallel_evaluate, parallel_step

ATOL, RTOL = 1e-6, 1e-5
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run every distributed scenario once in a 2-process gloo group; return the outputs."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker.main, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    reports = [json.loads((out / f"report_{r}.json").read_text()) for r in range(WORLD)]
    return out, reports


@pytest.fixture(scope="module")
def single():
    data, config, factory = worker.reference_setup()
    return data, config, train(config, dataset=data, model_factory=factory)


def test_both_ranks_end_with_the_same_weights(two_ranks):
    out, _ = two_ranks
    a, b = (load_file(str(out / f"final_{r}.safetensors")) for r in range(WORLD))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_processes_match_one_process(two_ranks, single):
    out, reports = two_ranks
    _, _, run = single
    dist_state = load_file(str(out / "final_0.safetensors"))
    for name, ref in run.model.state_dict().items():
        torch.testing.assert_close(dist_state[name], ref, atol=ATOL, rtol=RTOL, msg=name)
    for got, ref in zip(reports[0]["history"], run.history, strict=True):
        for key in ("epoch_loss", "train_loss", "test_loss"):
            assert got[key] == pytest.approx(ref[key], rel=1e-4), key
        assert got["train_acc"] == pytest.approx(ref["train_acc"], abs=0.5)
    assert reports[0]["history"] == reports[1]["history"]  # identical metrics on all ranks


def test_only_rank_0_writes_and_the_record_matches(two_ranks, single):
    out, reports = two_ranks
    _, config, run = single
    store = Store(out / "store")
    record = store.get_run(reports[0]["run_id"])
    assert record.status == "done" and record.id == run.id == reports[1]["run_id"]
    assert [e["epoch"] for e in store.epochs(record.id)] == [1, 2, 3]
    assert store.epochs(record.id)[-1]["train_loss"] == pytest.approx(run.final["train_loss"], rel=1e-4)
    assert [p.name for p in (out / "store" / "runs").iterdir()] == [record.id]
    assert reports[1]["again_equal"] and reports[0]["again_equal"]


def test_resume_under_two_processes(two_ranks):
    _, reports = two_ranks
    assert all(r["resumed_equal"] and r["resumed_epochs"] == 3 for r in reports)


def test_sharded_evaluation_equals_full(two_ranks):
    out, reports = two_ranks
    data, _, _ = worker.reference_setup()
    model = worker.reference_setup()[2]()
    model.load_state_dict(load_file(str(out / "final_0.safetensors")))
    loss, acc = evaluate(model, data.x_train, data.y_train, 40)
    for r in reports:
        assert r["eval"][0] == pytest.approx(loss, rel=1e-6)
        assert r["eval"][1] == pytest.approx(acc, abs=1e-9)


def test_sharded_objective_equals_the_full_data_objective(two_ranks):
    out, reports = two_ranks
    data, _, factory = worker.reference_setup()
    model = factory()
    model.load_state_dict(load_file(str(out / "final_0.safetensors")))
    full = ModelObjective(model, data.x_train, data.y_train, bn_mode="batch", chunk_size=50)
    got = load_file(str(out / "landscape_0.safetensors"))
    x0 = flatten_params(model)
    assert torch.equal(got["x0"], x0)
    v = torch.linspace(-1.0, 1.0, x0.numel())
    torch.testing.assert_close(got["loss"][0], full.loss(x0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["grad"], full.loss_and_grad(x0)[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["hvp"], full.hvp(x0, v), rtol=1e-4, atol=1e-5)
    ref = keskar_sharpness(full, x0, eps=1e-3, max_iters=5).value
    assert reports[0]["sharpness"] == reports[1]["sharpness"]
    assert reports[0]["sharpness"] == pytest.approx(ref, rel=1e-4)
    assert reports[0]["objective_samples"] == 250 and reports[0]["world_in_settings"] == 2


def test_errors_reach_every_rank(two_ranks):
    _, reports = two_ranks
    for r in reports:
        assert r["tiny_batch_error"].startswith("ConfigError: a batch of 1 samples cannot be split over 2")
        assert r["wrong_model_error"].startswith("ConfigError: a data-parallel step must be called")
        assert r["weights_error"].startswith("StoreError: no run nosuchrun")
        assert r["chunks_error"].startswith("ConfigError: 30 samples in chunks of 50 give fewer chunks")
        assert r["dim_error"] == (
            "ConfigError: ranks disagree on the number of parameters (260 to 325); "
            "every rank must measure the same network"
        )
        assert r["rank0_crash_error"].startswith(
            "ZeroDivisionError" if r["rank"] == 0 else "RuntimeError: rank 0: ZeroDivisionError"
        )


# -- single process: the hooks are the plain objects --------------------------------------
def test_hooks_are_identities_without_a_process_group(tiny):
    from sharpminima.train.checkpointing import RunFiles

    step = object()
    assert parallel_step(step, torch.nn.Linear(1, 1)) is step
    assert isinstance(open_run_files(None, worker.reference_setup()[1]), RunFiles)
    model = worker.reference_setup()[2]()
    assert parallel_evaluate(model, tiny.x_train, tiny.y_train, 100) == evaluate(
        model, tiny.x_train, tiny.y_train, 100
    )
    assert not distributed.is_active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.from_root(lambda: 5) == 5


def test_shard_range_covers_all_samples_aligned():
    for n, world, align in [(250, 2, 50), (10, 3, 1), (7, 4, 2), (0, 2, 1), (1000, 3, 64)]:
        spans = [distributed.shard_range(n, world, r, align) for r in range(world)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert all(start % align == 0 for start, _ in spans)
    with pytest.raises(ConfigError, match="cannot shard 5 samples in blocks of 1 over 2 ranks for rank 2"):
        distributed.shard_range(5, 2, 2)


def test_session_outside_torchrun_does_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.session() as created:
        assert created is False
    assert not distributed.launched()


def test_session_rejects_incomplete_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="WORLD_SIZE is set but RANK, LOCAL_RANK, MASTER_ADDR"):
        with distributed.session():
            pass
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ConfigError, match="RANK and LOCAL_RANK must be integers"):
        with distributed.session():
            pass
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="unknown torch.distributed backend 'mpi'"):
        with distributed.session(backend="mpi"):
            pass


def test_distributed_objective_single_process_and_its_errors(tiny):
    model = worker.reference_setup()[2]()
    local = ModelObjective(model, tiny.x_train, tiny.y_train, chunk_size=100)
    wrapped = DistributedObjective(local)
    x0 = flatten_params(model)
    assert wrapped.num_samples == 600 and wrapped.weight == 1.0
    torch.testing.assert_close(wrapped.loss(x0), local.loss(x0))
    assert wrapped.loss_and_accuracy(x0) == pytest.approx(local.loss_and_accuracy(x0))
    assert wrapped.bn_mode == "batch"  # the local objective's attributes show through
    assert shard_objective(model, tiny.x_train, tiny.y_train, chunk_size=100).num_samples == 600
    with pytest.raises(ConfigError, match="needs a local objective with num_samples"):
        DistributedObjective(FunctionObjective(lambda x: x.sum(), x0))
    empty = FunctionObjective(lambda x: x.sum(), x0)
    empty.num_samples = 0
    with pytest.raises(ConfigError, match="no rank holds a sample"):
        DistributedObjective(empty)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer, got 0"):
        shard_objective(model, tiny.x_train, tiny.y_train, chunk_size=0)


def test_torchrun_cli_train_matches_single_process(tmp_path, capsys):
    """``torchrun --nproc-per-node 2 -m sharpminima train`` records what one process does.

    F1's Linear layers carry a bias before BatchNorm (whose true gradient is 0, see
    ``_dist_worker.bn_mlp``), so the losses agree to a relative 1e-3 here, not 1e-5.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sharpminima.cli.app import main

    args = ["train", "--net", "f1", "--dataset", "synthetic", "--train-limit", "300", "--test-limit", "100",
            "--epochs", "2", "--batch-size", "75", "--json"]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "sharpminima",
         *args, "--store", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    parallel = json.loads(lines[0])
    with pytest.raises(SystemExit):
        main([*args, "--store", str(tmp_path / "single")])
    single = json.loads(capsys.readouterr().out)
    assert parallel["run_id"] == single["run_id"] and parallel["status"] == "done"
    for key in ("train_loss", "test_loss"):
        assert parallel[key] == pytest.approx(single[key], rel=1e-3)
    assert parallel["train_acc"] == pytest.approx(single["train_acc"], abs=1.0)
    assert Store(tmp_path / "ddp").get_run(parallel["run_id"]).summary["epochs"] == 2


def test_follower_store_reads_shared_and_keeps_writes_in_memory(tmp_path):
    from sharpminima.errors import StoreError
    from sharpminima.train.parallel import FollowerStore, follower_store

    store = Store(tmp_path)
    assert follower_store(store) is store  # rank 0 / no process group
    record, _ = store.get_or_create_run({"a": 1}, "a" * 16)
    store.add_measurement(record.id, "shared", {"eps": 1}, 2.0, {}, {})
    follower = FollowerStore(store)
    assert follower.get_run(record.id).id == record.id  # reads pass through
    assert follower.get_measurement(record.id, "shared", {"eps": 1})["value"] == 2.0
    assert follower.add_measurement(record.id, "mine", {"eps": 1}, 3.0, {}, {}) == -1
    assert follower.get_measurement(record.id, "mine", {"eps": 1})["value"] == 3.0
    assert store.get_measurement(record.id, "mine", {"eps": 1}) is None  # never written
    follower.set_status(record.id, "done")
    follower.log_epoch(record.id, 1, {"x": 1.0})
    assert store.get_run(record.id).status == "pending" and store.epochs(record.id) == []
    with pytest.raises(StoreError, match="Store.get_or_create_run must run on rank 0 only under torchrun"):
        follower.get_or_create_run({"b": 2}, "b" * 16)
