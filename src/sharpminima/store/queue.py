"""The store's work queue: runs claimed by workers that send heartbeats.

A :class:`~sharpminima.store.Store` is a :class:`WorkQueue`: ``sharpminima sweep`` workers
claim pending runs (or runs whose worker's heartbeat went stale) in one transaction each,
so no two workers train the same run.
"""

# ruff: noqa: D413

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sharpminima.errors import StoreError
from sharpminima.store.records import RunRecord, check_text, utc_now

logger = logging.getLogger("sharpminima.store.db")


class WorkQueue:
    """Claims and heartbeats on the ``runs`` table (mixed into the store)."""

    _write: Any
    _require_run: Any

    def claim_next(
        self, worker: str, stale_after_s: float = 300.0, *, kind: str | None = None
    ) -> RunRecord | None:
        """Atomically take the oldest run that needs a worker and mark it running.

        A run needs a worker if it is ``pending`` or ``interrupted``, or ``running`` with
        a heartbeat older than ``stale_after_s`` (its worker died). A run set ``running`` by
        :meth:`set_status` alone has no heartbeat and is never taken. No two callers,
        in any processes, get the same run unless its heartbeat went stale.

        Args:
            worker: Name of the claiming worker (e.g. ``f"{hostname}:{pid}"``).
            stale_after_s: Heartbeat age after which a running run is taken over.
            kind: Only claim runs of this kind.

        Returns:
            The claimed run (status ``running``), or None when nothing is left.

        Raises:
            StoreError: ``worker`` is empty.
        """
        check_text(worker, "worker")
        now_dt = datetime.now(UTC)
        now = now_dt.isoformat(timespec="microseconds")
        cutoff = (now_dt - timedelta(seconds=stale_after_s)).isoformat(timespec="microseconds")
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, status, worker FROM runs"
                " WHERE (status IN ('pending', 'interrupted') OR (status = 'running'"
                " AND heartbeat_at IS NOT NULL AND heartbeat_at < ?1))"
                " AND (?2 IS NULL OR kind = ?2) ORDER BY created_at, rowid LIMIT 1",
                (cutoff, kind),
            ).fetchone()
            if row is None:
                return None
            if row["status"] == "running":
                logger.warning(
                    "worker %s takes over run %s from %s (heartbeat older than %g s)",
                    worker,
                    row["id"],
                    row["worker"],
                    stale_after_s,
                )
            conn.execute(
                "UPDATE runs SET status = 'running', message = NULL, worker = ?,"
                " heartbeat_at = ?, updated_at = ? WHERE id = ?",
                (worker, now, now, row["id"]),
            )
            claimed = self._require_run(conn, row["id"])
        return RunRecord.from_row(claimed)

    def heartbeat(self, run_id: str, worker: str) -> None:
        """Tell the store ``worker`` is still working on ``run_id``.

        Call it more often than the ``stale_after_s`` other workers use.

        Args:
            run_id: Exact run id.
            worker: The name given to :meth:`claim_next`.

        Raises:
            StoreError: No such run, or the run is no longer this worker's (finished,
                or taken over after a stale heartbeat); stop working on it.
        """
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE id = ? AND worker = ?"
                " AND status = 'running'",
                (utc_now(), run_id, worker),
            )
            if cursor.rowcount == 0:
                row = self._require_run(conn, run_id)
                raise StoreError(
                    f"run {run_id} is no longer held by worker {worker} (status "
                    f"{row['status']}, worker {row['worker']}); stop working on it"
                )
