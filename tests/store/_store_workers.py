"""Functions run in spawned processes by the store concurrency tests (must be importable)."""

from __future__ import annotations

import time

from sharpminima.store import Store, db


def _machine_stub() -> dict:
    return {"stub": True}


def warm() -> None:
    """Pool initializer: cache the git query; stub the machine query so no worker imports
    torch (four torch imports at once take seconds; machine_info is tested in-process)."""
    db.machine_info = _machine_stub
    db.code_version()


def _wait(start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))


def hammer(root: str, worker: int, n: int, start_at: float) -> dict:
    """Many small writes of every kind, interleaved with other workers'."""
    _wait(start_at)
    created = {}
    with Store(root) as store:
        shared, created["shared"] = store.get_or_create_run({"shared": True}, "5" * 16)
        own, created["own"] = store.get_or_create_run({"worker": worker}, f"{worker:x}" * 16)
        for i in range(n):
            store.log_epoch(own.id, i, {"loss": 1.0 / (i + 1), "worker": worker})
            store.add_measurement(shared.id, "probe", {"worker": worker, "i": i}, i, {}, {})
            _, made = store.get_or_create_run({"n": i % 10}, f"n{i % 10:02d}" + "0" * 14)
            created[f"n{i % 10}"] = created.get(f"n{i % 10}", False) or made
    return created


def claim_all(root: str, worker: str, start_at: float) -> list[str]:
    """Claim runs until none is left, finishing each; returns the ids claimed."""
    _wait(start_at)
    claimed = []
    with Store(root) as store:
        while (run := store.claim_next(worker, stale_after_s=60.0)) is not None:
            claimed.append(run.id)
            store.heartbeat(run.id, worker)
            store.set_status(run.id, "done", summary={"worker": worker})
    return claimed


def create_same(root: str, start_at: float) -> bool:
    """Ask for one config at the same moment as other workers; True if this one made it."""
    _wait(start_at)
    with Store(root) as store:
        _, created = store.get_or_create_run({"same": 1}, "e" * 64)
    return created
