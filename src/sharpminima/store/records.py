"""The rows of the store: a run record, a measurement, and the checks of what goes in.

Shared by the ledger (:mod:`sharpminima.store.db`) and its work queue
(:mod:`sharpminima.store.queue`).
"""

# ruff: noqa: D413

from __future__ import annotations

import dataclasses
import math
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sharpminima.errors import StoreError
from sharpminima.store import _json

#: Run statuses.
STATUSES = ("pending", "running", "done", "failed", "diverged")


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

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-friendly dict (a deep copy)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RunRecord:
        """Read a ``runs`` row."""
        return cls(
            id=row["id"],
            kind=row["kind"],
            config=_json.loads(row["config"], default={}),
            config_hash=row["config_hash"],
            status=row["status"],
            message=row["message"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            code_version=row["code_version"],
            machine=_json.loads(row["machine"], default={}),
            summary=_json.loads(row["summary"], default={}),
        )


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
