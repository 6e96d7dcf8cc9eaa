"""Sweeps: runs queued in the store, taken by worker processes, each trained once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest
import torch

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError
from sharpminima.store import Store, load_checkpoint, unflatten_state
from sharpminima.sweep import (
    _Heartbeat,
    enqueue,
    expand_grid,
    parse_grid,
    run_sweep,
    run_worker,
    start_workers,
)
from sharpminima.train import train

BASE = TrainConfig(net="f1", dataset="synthetic", train_limit=300, test_limit=100, epochs=2, batch_size=50)
FAST = {"stale_after_s": 2.0, "heartbeat_s": 0.3, "threads": 1}


def run_cli(capsys, *args):
    from sharpminima.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_two_workers_train_four_runs_exactly_once(tmp_path):
    store = Store(tmp_path / "store")
    configs = expand_grid(BASE, parse_grid(["batch_size=50,100", "seed=0,1"]))
    result = run_sweep(store, configs, workers=2, poll_s=0.2, **FAST)
    assert result.complete and result.exit_codes == [0, 0]
    trained = [run_id for report in result.reports for run_id in report.trained]
    assert sorted(trained) == sorted(result.run_ids) and len(set(trained)) == 4
    assert all(report.trained for report in result.reports)  # both workers took work
    again = run_sweep(store, configs, workers=1, poll_s=0.2, **FAST)  # nothing left to do
    assert again.complete and again.reports[0].trained == []


def _running(store_path):
    with sqlite3.connect(store_path) as conn:
        return conn.execute(
            "SELECT r.id, r.worker, (SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.id)"
            " FROM runs r WHERE r.status = 'running' AND r.heartbeat_at IS NOT NULL"
        ).fetchall()


def test_a_killed_workers_run_is_taken_over_and_resumed(tmp_path):
    store = Store(tmp_path / "store")
    configs = expand_grid(BASE.replace(epochs=5), parse_grid(["seed=0,1"]))
    killed: dict = {}

    def kill_one(status, procs):
        if killed:
            return
        pids = {p.pid: p for p in procs}
        for run_id, worker, epochs in _running(store.path):
            pid = int(worker.rsplit(":", 1)[1])
            if epochs >= 1 and pid in pids:  # mid-run, after a checkpoint
                os.kill(pid, signal.SIGKILL)
                killed.update(run_id=run_id, pid=pid)
                return

    result = run_sweep(store, configs, workers=2, poll_s=0.1, progress=kill_one, **FAST)
    assert killed, "no worker was killed mid-run; the runs finished too fast"
    assert result.complete and sorted(result.exit_codes) == [-signal.SIGKILL, 0]
    survivor = result.reports[0]
    assert killed["run_id"] in survivor.trained and len(set(survivor.trained)) == len(survivor.trained)
    assert [e["epoch"] for e in store.epochs(killed["run_id"])] == [1, 2, 3, 4, 5]
    # Resumed from its checkpoint: the same weights as an uninterrupted run (one thread, as
    # the workers, so that the float reduction order is the same).
    config = TrainConfig.from_dict(store.get_run(killed["run_id"]).config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train(config).model.state_dict()
    finally:
        torch.set_num_threads(threads)
    stored = unflatten_state(*load_checkpoint(store.run_dir(killed["run_id"]) / "final.safetensors"))["model"]
    for name, value in reference.items():
        assert torch.equal(stored[name], value), name


def test_cli_worker_only_and_json(capsys, tmp_path):
    args = ["sweep", "--dataset", "synthetic", "--train-limit", "200", "--test-limit", "50", "--epochs", "1",
            "--grid", "seed=0,1", "--grid", "batch-size=100", "--worker-only", "--json",
            "--store", str(tmp_path)]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    doc = json.loads(out)
    assert [r["status"] for r in doc["runs"]] == ["done", "done"]
    assert [r["seed"] for r in doc["runs"]] == [0, 1] and doc["worker"]
    code, out, _ = run_cli(capsys, *args[:-3], "--store", str(tmp_path))  # table output, nothing to do
    assert code == 0 and "run_id" in out and out.count("done") == 2


def test_cli_reports_failed_runs(capsys, tmp_path):
    args = ["--net", "nosuchnet", "--dataset", "synthetic", "--train-limit", "100", "--batch-size", "50",
            "--grid", "seed=0", "--worker-only", "--store", str(tmp_path)]
    code, out, err = run_cli(capsys, "sweep", *args)
    assert code == 2 and "unknown network 'nosuchnet'" in err
    assert not Store(tmp_path).list_runs()  # rejected before anything was queued
    # a run queued by the Python API (no check) that fails in the worker is reported
    bad = TrainConfig(net="nosuchnet", dataset="synthetic", train_limit=100, batch_size=50)
    enqueue(Store(tmp_path), [bad])
    code, out, err = run_cli(capsys, "sweep", "--worker-only", "--store", str(tmp_path))
    assert code == 2 and "failed" in out and "nosuchnet" in Store(tmp_path).list_runs()[0].message
    assert err.startswith("error: 1 of 1 sweep runs did not finish (run ") and err.count("\n") == 1
    # queueing it again turns failed into pending
    store = Store(tmp_path)
    run_id = store.list_runs()[0].id
    assert store.get_run(run_id).status == "failed"
    enqueue(store, [TrainConfig.from_dict(store.get_run(run_id).config)])
    assert store.get_run(run_id).status == "pending"


def test_cli_errors(capsys, tmp_path, monkeypatch):
    code, _, err = run_cli(capsys, "sweep", "--store", str(tmp_path))
    assert code == 2 and "give the sweep with --grid" in err
    code, _, err = run_cli(capsys, "sweep", "--grid", "nosuch=1", "--store", str(tmp_path))
    assert code == 2 and "unknown config field 'nosuch' in grid" in err
    code, _, err = run_cli(capsys, "sweep", "--grid", "seed=0", "--workers", "0", "--store", str(tmp_path))
    assert code == 2 and "--workers must be a positive integer" in err and err.endswith("got 0\n")
    monkeypatch.setenv("WORLD_SIZE", "2")  # the CLI joins torchrun's group first: incomplete
    code, _, err = run_cli(capsys, "sweep", "--grid", "seed=0", "--store", str(tmp_path))
    assert code == 2 and err.startswith("error: WORLD_SIZE is set but RANK, LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr("sharpminima.distributed.launched", lambda: True)
    code, _, err = run_cli(capsys, "sweep", "--grid", "seed=0", "--store", str(tmp_path))
    assert code == 2 and "start sweep workers without torchrun" in err


def test_parse_grid_types_and_errors():
    grid = parse_grid(["batch_size=256,6000", "lr=1e-3,0.01", "method=plain", "train-limit=none,100",
                       "save_every_epoch=true"])
    assert grid == {"batch_size": [256, 6000], "lr": [0.001, 0.01], "method": ["plain"],
                    "train_limit": [None, 100], "save_every_epoch": [True]}
    configs = expand_grid(BASE, {"batch_size": [50, 100], "seed": [0, 1]})
    assert [(c.batch_size, c.seed) for c in configs] == [(50, 0), (50, 1), (100, 0), (100, 1)]
    with pytest.raises(ConfigError, match="grid spec 'seed' must look like name=value1,value2"):
        parse_grid(["seed"])
    with pytest.raises(ConfigError, match="config field seed appears twice"):
        parse_grid(["seed=1", "seed=2"])
    with pytest.raises(ConfigError, match="grid value 'x' for batch_size is not a valid int"):
        parse_grid(["batch_size=x"])
    with pytest.raises(ConfigError, match="'maybe' for save_every_epoch is not a valid true/false"):
        parse_grid(["save_every_epoch=maybe"])
    with pytest.raises(ConfigError, match="config field betas cannot be swept from the command line"):
        parse_grid(["betas=0.9"])
    with pytest.raises(ConfigError, match="batch size must be a positive integer"):
        expand_grid(BASE, {"batch_size": [0]})


def test_worker_option_errors(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ConfigError, match=r"need 0 < heartbeat \(5 s\) < stale timeout \(2 s\)"):
        run_worker(store, stale_after_s=2.0, heartbeat_s=5.0)
    with pytest.raises(ConfigError, match="--workers must be a positive integer, got 0"):
        start_workers(tmp_path, 0)
    with pytest.raises(ConfigError, match="the sweep has no runs"):
        run_sweep(store, [])
    assert run_worker(store).trained == []  # an empty queue: nothing to do


def test_heartbeat_notices_a_takeover(tmp_path):
    store = Store(tmp_path)
    record, _ = store.get_or_create_run(BASE.to_dict(), BASE.hash())
    store.claim_next("owner", 60.0)
    lost = []
    beat = _Heartbeat(store, record.id, "someone-else", 0.01, lambda: lost.append(True))
    beat.start()
    beat.join(timeout=10)
    assert beat.lost.is_set() and lost == [True]
    time.sleep(0)
