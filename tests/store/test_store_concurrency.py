"""Several processes writing one store at once lose nothing and never double-claim."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import time
from pathlib import Path

import _store_workers as workers
import pytest

from sharpminima.store import Store

NUM_WORKERS = 4


@pytest.fixture(scope="module")
def pool():
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(NUM_WORKERS, initializer=workers.warm) as pool:
        # Start all workers (imports included) before any test relies on their timing.
        pool.map(time.sleep, [0.0] * NUM_WORKERS, chunksize=1)
        yield pool


def _start_at() -> float:
    return time.time() + 0.3


def test_concurrent_writes_lose_nothing(tmp_path, pool):
    root, n = str(tmp_path / "store"), 40
    Store(root).close()
    jobs = [(root, w, n, _start_at()) for w in range(NUM_WORKERS)]
    results = pool.starmap(workers.hammer, jobs, chunksize=1)

    assert sum(r["shared"] for r in results) == 1
    assert all(r["own"] for r in results)
    for k in range(10):
        assert sum(r[f"n{k}"] for r in results) == 1
    with Store(root) as store:
        assert len(store.list_runs()) == 1 + NUM_WORKERS + 10
        for w in range(NUM_WORKERS):
            own = store.find_run(f"{w:x}" * 16)
            epochs = store.epochs(own.id)
            assert [e["epoch"] for e in epochs] == list(range(n))
            assert all(e["worker"] == w for e in epochs)
        shared = store.find_run("5" * 16)
        got = {(m["params"]["worker"], m["params"]["i"]) for m in store.measurements(shared.id)}
        assert got == {(w, i) for w in range(NUM_WORKERS) for i in range(n)}


def test_concurrent_get_or_create_makes_one_run(tmp_path, pool):
    root = str(tmp_path / "store")
    Store(root).close()
    start_at = _start_at()
    created = pool.starmap(workers.create_same, [(root, start_at)] * NUM_WORKERS, chunksize=1)
    assert sorted(created) == [False] * (NUM_WORKERS - 1) + [True]
    with Store(root) as store:
        assert [r.config_hash for r in store.list_runs()] == ["e" * 64]


def test_concurrent_claims_never_hand_a_run_twice(tmp_path, pool):
    root = str(tmp_path / "store")
    with Store(root) as store:
        ids = [store.get_or_create_run({"i": i}, f"{i:04d}" + "c" * 60)[0].id for i in range(40)]
        # A run whose worker died an hour ago must be taken over by exactly one worker.
        dead = store.claim_next("dead-worker")
        assert dead is not None
    with contextlib.closing(sqlite3.connect(Path(root) / "store.sqlite")) as conn, conn:
        conn.execute(
            "UPDATE runs SET heartbeat_at = '2000-01-01T00:00:00.000000+00:00' WHERE id = ?",
            (dead.id,),
        )
    start_at = _start_at()
    jobs = [(root, f"w{w}", start_at) for w in range(NUM_WORKERS)]
    claimed = pool.starmap(workers.claim_all, jobs, chunksize=1)

    flat = [run_id for ids_of_worker in claimed for run_id in ids_of_worker]
    assert sorted(flat) == sorted(ids)  # every run once, including the stale one
    with Store(root) as store:
        runs = store.list_runs()
        assert {r.status for r in runs} == {"done"}
        holder = {r.id: r.summary["worker"] for r in runs}
        for w, ids_of_worker in enumerate(claimed):
            assert all(holder[run_id] == f"w{w}" for run_id in ids_of_worker)
