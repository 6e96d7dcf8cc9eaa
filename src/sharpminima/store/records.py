"""The rows of the store: a run record, a measurement, and the checks of what goes in.

Shared by the ledger (:mod:`sharpminima.store.db`) and its work queue
(:mod:`sharpminima.store.queue`).
"""

# ruff: noqa: D413

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sharpminima.errors import StoreError
from sharpminima.store import _json

#: Run statuses. ``interrupted``: stopped by Ctrl-C or SIGTERM (or its process died,
#: as :meth:`Store.list_runs` infers); like ``pending`` and ``running`` it resumes from
#: its last checkpoint when the same command runs again.
STATUSES = ("pending", "running", "done", "failed", "diverged", "interrupted")

#: Statuses of runs that are not finished and resume when trained again.
RESUMABLE = ("pending", "running", "interrupted")


_RUN_ID_RE = re.compile(r"[A-Za-z0-9_-]{12}")


def utc_now() -> str:
    """Return the current UTC time as fixed-width ISO 8601 (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RunRecord:
    """One row of the ``runs`` table.

    Attributes:
        id: Run id, the first 12 characters of ``config_hash``.
        kind: What the run is (``"train"`` ...).
        config: The configuration, as given to :meth:`Store.get_or_create_run`.
        config_hash: The configuration's identity.
        status: One of :data:`STATUSES`.
        message: Why the run failed or diverged, or None.
        created_at: ISO 8601 UTC time the row was made.
        updated_at: ISO 8601 UTC time of the last status change.
        code_version: Git commit (``-dirty`` if modified) or package version.
        machine: See :func:`machine_info`.
        summary: Free-form results merged in by :meth:`Store.set_status`.
        worker: The process (``host:pid``) or queue worker that last ran it, or None.
        heartbeat_at: A queue worker's last heartbeat (ISO 8601 UTC), or None.
    """

    id: str
    kind: str
    config: dict
    config_hash: str
    status: str
    message: str | None
    created_at: str
    updated_at: str
    code_version: str
    machine: dict
    summary: dict
    worker: str | None = None
    heartbeat_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-friendly dict (a deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        """Read a ``runs`` row."""
        return cls(
            id=check_run_id(row["id"]),
            kind=row["kind"],
            config=check_dict(_json.loads(row["config"], default={}, what="run config"), "run config"),
            config_hash=row["config_hash"],
            status=row["status"],
            message=row["message"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            code_version=row["code_version"],
            machine=check_dict(_json.loads(row["machine"], default={}, what="run machine"), "run machine"),
            summary=check_dict(_json.loads(row["summary"], default={}, what="run summary"), "run summary"),
            worker=row["worker"] if "worker" in row.keys() else None,
            heartbeat_at=row["heartbeat_at"] if "heartbeat_at" in row.keys() else None,
        )

    def observed_status(self, stale_after_s: float = 300.0) -> str:
        """The status as far as this machine can tell: a ``running`` run may be dead.

        A ``running`` run whose process (``worker`` = ``host:pid``) ran on this machine
        and no longer exists was interrupted (killed, or the machine rebooted) and reads
        ``interrupted``; one from another machine whose queue heartbeat is older than
        ``stale_after_s`` reads ``running (stale heartbeat)``. Nothing is written: rerunning
        the command resumes it.

        Args:
            stale_after_s: Heartbeat age counted as stale.

        Returns:
            The stored status, ``interrupted`` or ``running (stale heartbeat)``.
        """
        if self.status != "running":
            return self.status
        host, _, pid = (self.worker or "").rpartition(":")
        if host == platform.node() and pid.isdigit() and not _process_alive(int(pid)):
            return "interrupted"
        if self.heartbeat_at:
            try:
                age = (datetime.now(UTC) - datetime.fromisoformat(self.heartbeat_at)).total_seconds()
            except (TypeError, ValueError):
                return self.status
            if age > stale_after_s:
                return "running (stale heartbeat)"
        return self.status


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process id we can ask about: assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def measurement_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """Read a ``measurements`` row (NULL value as NaN)."""
    return {
        "id": row["id"],
        "run_id": row["run_id"],
        "kind": row["kind"],
        "params": _json.loads(row["params"], default={}),
        "params_hash": row["params_hash"],
        "value": math.nan if row["value"] is None else row["value"],
        "cost": _json.loads(row["cost"], default={}),
        "result": _json.loads(row["result"], default={}),
        "created_at": row["created_at"],
    }


def check_run_id(value: Any) -> str:
    """Return ``value`` if it is a run id (12 of ``[A-Za-z0-9_-]``), else raise StoreError.

    Ids are read from a database file anyone may edit, and name folders: one that is not
    an id (``../x``, ``/etc``) never becomes a path.
    """
    if not isinstance(value, str) or not _RUN_ID_RE.fullmatch(value):
        shown = repr(value)[:40]
        raise StoreError(
            f"the store holds a run id {shown} that is not 12 characters of [A-Za-z0-9_-]; "
            "the database was modified by hand, restore it from a backup"
        )
    return value


def check_status(status: str | None) -> None:
    """Raise StoreError unless ``status`` is None or one of :data:`STATUSES`."""
    if status is not None and status not in STATUSES:
        raise StoreError(f"unknown run status {status!r}; use one of {', '.join(STATUSES)}")


def check_dict(value: Any, what: str) -> dict:
    """Return ``value`` if it is a dict, else raise StoreError."""
    if not isinstance(value, dict):
        raise StoreError(f"{what} must be a dict, got {type(value).__name__}")
    return value


def check_text(value: Any, what: str) -> str:
    """Return ``value`` if it is a non-empty string, else raise StoreError."""
    if not isinstance(value, str) or not value:
        raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    return value
