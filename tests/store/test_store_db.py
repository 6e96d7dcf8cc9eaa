"""The SQLite run store: runs, statuses, epochs, measurements, work queue, errors."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import torch

import sharpminima
from sharpminima.errors import StoreError
from sharpminima.store import RunRecord, Store, provenance

H1 = "a1" * 32  # config hashes: 64 hex digits, like sha256
H2 = "b2" * 32


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


@pytest.fixture
def run(store) -> RunRecord:
    return store.get_or_create_run({"lr": 0.1, "batch": 256}, H1)[0]


def _sql(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    """Run SQL on a separate raw connection (as another process would)."""
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


# ----------------------------------------------------------------------------- the file


def test_new_store_layout_and_pragmas(tmp_path):
    with Store(tmp_path / "s") as store:
        assert (tmp_path / "s" / "runs").is_dir()
        assert store.path == tmp_path / "s" / "store.sqlite"
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60000
    assert _sql(store, "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
    tables = {row[0] for row in _sql(store, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "runs", "epochs", "measurements"} <= tables
    Store(tmp_path / "s").close()  # reopening an existing store is fine


def test_default_store_location(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPMINIMA_STORE", str(tmp_path / "env"))
    with Store.default() as store:
        assert store.root == tmp_path / "env"
    monkeypatch.delenv("SHARPMINIMA_STORE")
    monkeypatch.chdir(tmp_path)
    with Store.default() as store:
        assert store.root == Path("runs") and (tmp_path / "runs" / "store.sqlite").exists()
    assert repr(store) == "Store('runs')"


def test_store_refuses_unusable_roots(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create store folder .*SHARPMINIMA_STORE"):
        Store(tmp_path / "file")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="store .* file is not a database"):
        Store(tmp_path / "bad")


def test_store_refuses_newer_schema(tmp_path):
    Store(tmp_path / "s").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "s" / "store.sqlite")) as conn, conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99, this sharpminima knows 1"):
        Store(tmp_path / "s")


def test_closed_store_refuses_use(tmp_path):
    with Store(tmp_path / "s") as store:
        pass
    with pytest.raises(StoreError, match="is closed; open a new Store"):
        store.list_runs()
    store.close()  # closing twice is harmless


def test_locked_store_times_out_with_a_store_error(tmp_path, run):
    store = Store(tmp_path / "store", timeout_s=0.2)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="stayed locked by another process for 0.2 s"):
            store.log_epoch(run.id, 0, {})
        assert store.get_run(run.id).id == run.id  # WAL: reads go on during a write
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.log_epoch(run.id, 0, {})
    store.close()


# ----------------------------------------------------------------------------- runs


def test_get_or_create_run_is_idempotent(store):
    record, created = store.get_or_create_run({"lr": 0.1, "nested": {"b": [1, 2]}}, H1)
    assert created
    assert record.id == H1[:12] and record.status == "pending" and record.kind == "train"
    assert record.config == {"lr": 0.1, "nested": {"b": [1, 2]}}
    assert record.code_version and set(record.machine) >= {"python", "torch", "cpu", "cuda"}
    assert record.summary == {} and record.message is None
    again, created = store.get_or_create_run({"nested": {"b": [1, 2]}, "lr": 0.1}, H1)
    assert not created and again == record
    assert store.find_run(H1) == record and store.find_run(H2) is None
    assert record.to_dict()["config"] == record.config


def test_get_or_create_run_refuses_bad_arguments(store, run):
    with pytest.raises(StoreError, match="config must be a dict, got list"):
        store.get_or_create_run([1], H2)
    with pytest.raises(StoreError, match="config_hash must be at least 12 characters"):
        store.get_or_create_run({}, "abc")
    with pytest.raises(StoreError, match="config_hash must be at least 12 characters"):
        store.get_or_create_run({}, "../../etc/passwd")
    with pytest.raises(StoreError, match="run kind must be a non-empty string"):
        store.get_or_create_run({}, H2, kind="")
    with pytest.raises(StoreError, match="config is not JSON-serialisable"):
        store.get_or_create_run({"x": {1, 2}}, H2)
    with pytest.raises(StoreError, match="already names a 'train' run; a 'sweep' run needs"):
        store.get_or_create_run({"lr": 0.1, "batch": 256}, H1, kind="sweep")
    with pytest.raises(StoreError, match="run id a1a1a1a1a1a1 is taken by another config hash"):
        store.get_or_create_run({}, H1[:12] + "ffff")
    assert len(store.list_runs()) == 1


def test_same_hash_with_another_config_keeps_the_stored_one(store, run, caplog):
    with caplog.at_level(logging.WARNING, logger="sharpminima.store.db"):
        record, created = store.get_or_create_run({"lr": 0.2}, H1)
    assert not created and record.config == run.config
    assert "stored config differs" in caplog.text


def test_get_run_by_id_prefix_and_hash(store, run):
    assert store.get_run(run.id) == run
    assert store.get_run(run.id[:4]) == run
    assert store.get_run(H1) == run  # the full config hash works too
    with pytest.raises(StoreError, match="no run zzz in store .*; list runs with `sharpminima"):
        store.get_run("zzz")
    with pytest.raises(StoreError, match="run id must be a non-empty string"):
        store.get_run("")
    store.get_or_create_run({}, "a1a1ff" + "0" * 10)
    with pytest.raises(StoreError, match="run prefix 'a1a1' is ambiguous .*give more characters"):
        store.get_run("a1a1")
    assert store.get_run("a1a1a").id == run.id


def test_list_runs_filters_and_orders(store):
    ids = [store.get_or_create_run({"i": i}, f"{i:04d}" + "c" * 60)[0].id for i in range(4)]
    store.get_or_create_run({"m": 1}, H2, kind="measure")
    store.set_status(ids[1], "done")
    store.set_status(ids[3], "done")
    assert [r.id for r in store.list_runs()] == [*ids, H2[:12]]
    assert [r.id for r in store.list_runs(status="done")] == [ids[1], ids[3]]
    assert [r.id for r in store.list_runs(kind="measure")] == [H2[:12]]
    assert store.list_runs(status="done", kind="measure") == []
    with pytest.raises(StoreError, match="unknown run status 'finished'; use one of pending"):
        store.list_runs(status="finished")


def test_set_status_validates_and_merges_summary(store, run):
    with pytest.raises(StoreError, match="unknown run status 'ok'"):
        store.set_status(run.id, "ok")
    with pytest.raises(StoreError, match="no run nope in store"):
        store.set_status("nope", "done")
    with pytest.raises(StoreError, match="summary must be a dict, got list"):
        store.set_status(run.id, "done", summary=[1])
    with pytest.raises(StoreError, match="summary is not JSON-serialisable"):
        store.set_status(run.id, "done", summary={"t": object()})
    store.set_status(run.id, "running", summary={"train_loss": 0.5, "epochs": 1})
    failed = store.set_status(run.id, "diverged", "loss became NaN", {"train_loss": math.nan})
    assert failed.status == "diverged" and failed.message == "loss became NaN"
    assert math.isnan(failed.summary["train_loss"]) and failed.summary["epochs"] == 1
    assert failed.updated_at >= run.updated_at
    assert store.set_status(run.id, "pending").message is None  # None clears the message
    assert _sql(store, "SELECT summary FROM runs") == [('{"epochs":1,"train_loss":"NaN"}',)]


def test_run_dir(store, run):
    folder = store.run_dir(run.id)
    assert folder == store.root / "runs" / run.id and folder.is_dir()
    assert store.run_dir(run.id) == folder
    with pytest.raises(StoreError, match="no run ../x in store"):
        store.run_dir("../x")
    other = store.get_or_create_run({}, H2)[0]
    (store.root / "runs" / other.id).write_text("in the way")
    with pytest.raises(StoreError, match="cannot create run folder"):
        store.run_dir(other.id)


# ----------------------------------------------------------------------------- epochs


def test_epochs_upsert_order_and_truncate(store, run):
    for epoch in (2, 0, 1, 3):
        store.log_epoch(run.id, epoch, {"loss": 1.0 / (epoch + 1), "acc": 0.5})
    store.log_epoch(run.id, 1, {"loss": 9.0})  # replaces epoch 1 entirely
    store.log_epoch(run.id, 4, {"epoch": 4, "loss": math.inf, "gap": -math.inf, "x": math.nan})
    epochs = store.epochs(run.id)
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3, 4]
    assert epochs[1] == {"epoch": 1, "loss": 9.0}
    assert epochs[4]["loss"] == math.inf and epochs[4]["gap"] == -math.inf
    assert math.isnan(epochs[4]["x"])
    assert store.truncate_epochs(run.id, 2) == 2
    assert [e["epoch"] for e in store.epochs(run.id)] == [0, 1, 2]
    assert store.truncate_epochs(run.id, 5) == 0
    assert store.truncate_epochs(run.id, -1) == 3 and store.epochs(run.id) == []


def test_epochs_refuse_bad_input(store, run):
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(StoreError, match="epoch must be an int >= 0"):
            store.log_epoch(run.id, bad, {})
    with pytest.raises(StoreError, match="metrics must be a dict"):
        store.log_epoch(run.id, 0, [0.1])
    with pytest.raises(StoreError, match="metrics name epoch .* but log_epoch was given 3"):
        store.log_epoch(run.id, 3, {"epoch": 2})
    with pytest.raises(StoreError, match="metrics is not JSON-serialisable"):
        store.log_epoch(run.id, 0, {"w": torch.ones(3)})
    with pytest.raises(StoreError, match="no run nope in store"):
        store.log_epoch("nope", 0, {})
    with pytest.raises(StoreError, match="no run nope in store"):
        store.epochs("nope")
    with pytest.raises(StoreError, match="no run nope in store"):
        store.truncate_epochs("nope", 0)
    assert store.epochs(run.id) == []


def test_scalar_tensors_in_metrics_become_numbers(store, run):
    store.log_epoch(run.id, 0, {"loss": torch.tensor(0.25), "n": torch.tensor(3)})
    assert store.epochs(run.id) == [{"epoch": 0, "loss": 0.25, "n": 3}]


# ----------------------------------------------------------------------------- measurements


def test_measurements_upsert_and_lookup(store, run):
    params = {"eps": 1e-3, "box": "l_inf", "steps": 10}
    first = store.add_measurement(run.id, "sharpness", params, 0.5, {"num_grad": 10}, {"a": 1})
    again = store.add_measurement(
        run.id, "sharpness", dict(reversed(params.items())), 0.7, {"num_grad": 12}, {"a": 2}
    )
    assert again == first  # same (run, kind, params) whatever the dict order: replaced
    other = store.add_measurement(run.id, "sharpness", {**params, "eps": 5e-4}, 0.2, {}, {})
    trace = store.add_measurement(run.id, "trace", {}, float("nan"), {"seconds": 1.5}, {})
    assert len({first, other, trace}) == 3

    got = store.get_measurement(run.id, "sharpness", {"steps": 10, "eps": 1e-3, "box": "l_inf"})
    assert got["id"] == first and got["value"] == 0.7
    assert got["cost"] == {"num_grad": 12} and got["result"] == {"a": 2}
    assert got["params"] == params and len(got["params_hash"]) == 64
    assert store.get_measurement(run.id, "sharpness", {"eps": 1}) is None
    assert store.get_measurement(run.id, "eigen", params) is None
    assert math.isnan(store.get_measurement(run.id, "trace", {})["value"])
    store.add_measurement(run.id, "eigen", {}, -math.inf, {}, {})
    assert store.get_measurement(run.id, "eigen", {})["value"] == -math.inf

    assert [m["id"] for m in store.measurements()][:3] == [first, other, trace]
    assert [m["id"] for m in store.measurements(kind="trace")] == [trace]
    assert [m["id"] for m in store.measurements(run_id=run.id, kind="sharpness")] == [first, other]
    assert store.measurements(run_id="nope") == []


def test_measurements_refuse_bad_input(store, run):
    with pytest.raises(StoreError, match="measurement value must be a number, got 'big'"):
        store.add_measurement(run.id, "k", {}, "big", {}, {})
    with pytest.raises(StoreError, match="measurement kind must be a non-empty string"):
        store.add_measurement(run.id, "", {}, 1.0, {}, {})
    with pytest.raises(StoreError, match="params must be a dict"):
        store.add_measurement(run.id, "k", [1], 1.0, {}, {})
    with pytest.raises(StoreError, match="cost must be a dict"):
        store.add_measurement(run.id, "k", {}, 1.0, None, {})
    with pytest.raises(StoreError, match="result is not JSON-serialisable"):
        store.add_measurement(run.id, "k", {}, 1.0, {}, {"v": torch.ones(2)})
    with pytest.raises(StoreError, match="no run nope in store"):
        store.add_measurement("nope", "k", {}, 1.0, {}, {})
    assert store.measurements() == []


def test_json_columns_are_canonical(store):
    record = store.get_or_create_run({"b": 1, "a": (1, 2), "c": math.inf}, H2)[0]
    assert record.config == {"a": [1, 2], "b": 1, "c": math.inf}
    assert _sql(store, "SELECT config FROM runs") == [('{"a":[1,2],"b":1,"c":"Infinity"}',)]


# ----------------------------------------------------------------------------- work queue


def test_claim_next_takes_oldest_pending_then_nothing(store):
    ids = [store.get_or_create_run({"i": i}, f"{i:04d}" + "c" * 60)[0].id for i in range(3)]
    store.get_or_create_run({"m": 1}, H2, kind="measure")
    store.set_status(ids[0], "done")
    first = store.claim_next("w1", kind="train")
    assert first.id == ids[1] and first.status == "running"
    assert _sql(store, "SELECT worker FROM runs WHERE id = ?", (ids[1],)) == [("w1",)]
    assert store.claim_next("w2", kind="train").id == ids[2]
    assert store.claim_next("w3", kind="train") is None
    assert store.claim_next("w3").id == H2[:12]
    assert store.claim_next("w3") is None
    with pytest.raises(StoreError, match="worker must be a non-empty string"):
        store.claim_next("")


def test_stale_running_run_is_reclaimed_and_old_worker_told(store, run):
    assert store.claim_next("w1").id == run.id
    store.heartbeat(run.id, "w1")
    assert store.claim_next("w2") is None  # fresh heartbeat: not stale
    _sql(store, "UPDATE runs SET heartbeat_at = '2000-01-01T00:00:00.000000+00:00'")
    assert store.claim_next("w2", stale_after_s=300).id == run.id
    with pytest.raises(StoreError, match=f"run {run.id} is no longer held by worker w1 "):
        store.heartbeat(run.id, "w1")
    store.heartbeat(run.id, "w2")
    with pytest.raises(StoreError, match="no run nope in store"):
        store.heartbeat("nope", "w2")


def test_finished_or_directly_started_runs_are_never_claimed(store, run):
    store.claim_next("w1")
    store.set_status(run.id, "failed", "boom")
    assert _sql(store, "SELECT heartbeat_at, worker FROM runs") == [(None, "w1")]
    with pytest.raises(StoreError, match="no longer held by worker w1 .*status failed"):
        store.heartbeat(run.id, "w1")
    other = store.get_or_create_run({}, H2)[0]
    store.set_status(other.id, "running")  # a plain `sharpminima train`: no heartbeat
    assert store.claim_next("w2", stale_after_s=0.0) is None


# ----------------------------------------------------------------------------- processes


def test_store_is_usable_from_threads(store, run):
    errors = []

    def beat():
        try:
            for i in range(20):
                store.log_epoch(run.id, i, {"i": i})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=beat) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(store.epochs(run.id)) == 20


def _child_logs(store: Store, run_id: str) -> None:
    store.log_epoch(run_id, 7, {"from": "child"})


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_forked_child_opens_its_own_connection(store, run):
    store.log_epoch(run.id, 0, {"from": "parent"})
    child = multiprocessing.get_context("fork").Process(target=_child_logs, args=(store, run.id))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    store.log_epoch(run.id, 1, {"from": "parent"})  # the parent's connection still works
    assert [e["from"] for e in store.epochs(run.id)] == ["parent", "parent", "child"]


# ----------------------------------------------------------------------------- environment


@pytest.fixture
def fresh_caches():
    provenance.code_version.cache_clear()
    provenance.machine_info.cache_clear()
    yield
    provenance.code_version.cache_clear()
    provenance.machine_info.cache_clear()


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"rev-parse": "abc1234", "ls-files": "__init__.py", "status": ""}, "abc1234"),
        ({"rev-parse": "abc1234", "ls-files": "__init__.py", "status": " M x"}, "abc1234-dirty"),
        ({"rev-parse": "abc1234", "ls-files": "", "status": ""}, sharpminima.__version__),
        ({}, sharpminima.__version__),  # no git at all
    ],
)
def test_code_version(monkeypatch, fresh_caches, answers, expected):
    def fake_run(args, **kwargs):
        assert kwargs["timeout"] > 0 and Path(kwargs["cwd"]).name == "sharpminima"
        if not answers:
            raise FileNotFoundError("git")
        return subprocess.CompletedProcess(args, 0, stdout=answers[args[1]] + "\n")

    monkeypatch.setattr(provenance.subprocess, "run", fake_run)
    assert provenance.code_version() == expected


def test_machine_info_survives_a_cuda_failure(monkeypatch, fresh_caches, caplog):
    def broken():
        raise RuntimeError("Cannot re-initialize CUDA in forked subprocess")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    with caplog.at_level(logging.WARNING, logger="sharpminima.store.provenance"):
        info = provenance.machine_info()
    assert info["cuda"] is None and info["cpu_count"] >= 1
    assert "could not query CUDA" in caplog.text


def test_sqlite_failures_become_store_errors(store, run):
    store.log_epoch(run.id, 0, {})
    _sql(store, "DROP TABLE measurements")
    _sql(store, "DROP TABLE epochs")
    with pytest.raises(StoreError, match="store .*: no such table: measurements; check the file"):
        store.measurements()
    with pytest.raises(StoreError, match="no such table: measurements"):
        store.add_measurement(run.id, "k", {}, 1.0, {}, {})
    with pytest.raises(StoreError, match="no such table: epochs"):
        store.epochs(run.id)


def test_package_exports():
    import sharpminima.store as store_pkg

    assert callable(store_pkg.save_checkpoint) and "load_checkpoint" in dir(store_pkg)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        store_pkg.nope  # noqa: B018


def test_inputs_provenance_names_the_commits_that_trained_the_runs(store, run):
    other = store.get_or_create_run({"lr": 0.2}, H2)[0]
    _sql(store, "UPDATE runs SET code_version = 'abc1234' WHERE id = ?", (other.id,))  # an earlier commit's
    tally = provenance.MeasurementTally(computed=2, reused=5)
    got = provenance.inputs_provenance(store, [run.id, other.id, run.id, "feedbeef0000"], tally)
    assert got == {
        "runs_trained_by": {"abc1234": 1, run.code_version: 1, "not in the store": 1},
        "measurements_last_call": {"computed": 2, "read_from_store": 5},
    }
    assert provenance.inputs_provenance(None, [run.id], None) == {}
    provenance.note_measurement(run.id, "hessian_trace", {}, reused=True)  # no tally: counted nowhere
    counted = provenance.MeasurementTally()
    for params, reused in (({"k": 1}, False), ({"k": 1}, True), ({"k": 2}, True), ({"k": 2}, True)):
        counted.note(run.id, "hessian_trace", params, reused)
    assert (counted.computed, counted.reused) == (1, 1)  # each measurement once, as first seen
