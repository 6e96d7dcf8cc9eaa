"""The run store: one SQLite file that is the ledger of every run and measurement.

``Store(root)`` keeps ``root/store.sqlite`` (stdlib :mod:`sqlite3`, WAL journal) and
``root/runs/<run id>/`` folders for checkpoints and other files. The database holds:

* ``runs``: one row per configuration (identity = the config hash; the run id is its
  first 12 characters) with the config itself, status, message, code version, machine,
  a free-form summary and, for work queues, the worker holding it and its heartbeat.
* ``epochs``: per-epoch metrics of a run, upserted by ``(run_id, epoch)``.
* ``measurements``: landscape measurements (sharpness, eigenvalues...) keyed by
  ``(run_id, kind, sha256 of the canonical JSON of params)``, with value, cost, result.
* ``meta``: the schema version.

Concurrency. Several processes (a sweep's workers, a report reading the store) may use
one store at once. Each :class:`Store` holds one connection per process (a child made by
``fork`` opens its own rather than reuse its parent's) guarded by a lock, so threads may
share a Store (e.g. a heartbeat thread). Every write is one short ``BEGIN IMMEDIATE``
transaction; a writer waits up to ``timeout_s`` (60 s) for another to finish, and WAL
lets readers run alongside a writer. ``synchronous=FULL``: a committed row survives a
power cut.

JSON columns are canonical (sorted keys, compact) and strict: NaN and infinities, e.g.
the losses of a diverged run, are stored as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` and read back as floats (see :mod:`sharpminima.store._json`). A NaN
measurement ``value`` is stored as SQL NULL and read back as NaN.
"""

# ruff: noqa: D413  (Google style: no blank line closes a docstring; pyproject lacks convention)

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sharpminima.errors import StoreError
from sharpminima.store import _json
from sharpminima.store.provenance import code_version, machine_info
from sharpminima.store.queue import WorkQueue
from sharpminima.store.records import (
    STATUSES,
    RunRecord,
    check_dict,
    check_run_id,
    check_status,
    check_text,
    measurement_from_row,
    utc_now,
)

__all__ = ["SCHEMA_VERSION", "STATUSES", "RunRecord", "Store", "code_version", "machine_info"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "store.sqlite"
RUN_ID_LENGTH = 12

_HASH_RE = re.compile(r"[A-Za-z0-9_-]{12,}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    config_hash TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    code_version TEXT NOT NULL,
    machine TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    worker TEXT,
    heartbeat_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    value REAL,
    cost TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (run_id, kind, params_hash)
);
CREATE INDEX IF NOT EXISTS measurements_by_kind ON measurements (kind);
"""


class Store(WorkQueue):
    """The SQLite ledger of runs, epochs and measurements under one folder.

    Args:
        root: Folder of the store; created (with ``runs/``) if missing.
        timeout_s: How long a write waits for another process's write to finish.
        read_only: Open without ever writing (``runs list``, reports): nothing is
            created, a missing store reads as empty, a store on read-only media can be
            read, and every write raises :class:`StoreError`.

    Raises:
        StoreError: ``root`` is a file or cannot be created, ``store.sqlite`` is not a
            SQLite database (or is a folder), or it was written by a newer sharpminima
            (higher schema version).

    Example:
        >>> with Store("runs") as store:
        ...     run, created = store.get_or_create_run(config, config_hash)
        ...     store.set_status(run.id, "running")
    """

    def __init__(
        self, root: str | os.PathLike[str], *, timeout_s: float = 60.0, read_only: bool = False
    ) -> None:
        self.root = Path(root)
        self.path = self.root / DB_NAME
        self.timeout_s = float(timeout_s)
        self.read_only = read_only
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"cannot create store folder {self.root} (it is a file); "
                "set SHARPMINIMA_STORE (or --store) to a folder"
            )
        if self.path.exists() and not self.path.is_file():
            raise StoreError(
                f"store database {self.path} is not a file (a folder?); move it away or use another store"
            )
        if not read_only:
            try:
                (self.root / "runs").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create store folder {self.root} ({exc.strerror or exc}); "
                    "set SHARPMINIMA_STORE to a writable folder"
                ) from None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        self._closed = False
        with self._locked():
            pass  # opens the connection and creates or checks the schema now

    @classmethod
    def default(cls) -> Store:
        """Open the store at ``$SHARPMINIMA_STORE``, or ``./runs`` when it is unset.

        Returns:
            The store.
        """
        return cls(os.environ.get("SHARPMINIMA_STORE") or "runs")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ connection

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            return self._open_read_only()
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            self._set_wal(conn)
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            self._ensure_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._error(exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        """Open without writing anything: ``mode=ro``, or ``immutable=1`` on read-only media.

        A missing database reads as an empty store (an in-memory one with the schema).
        """
        if not self.path.exists():
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.executescript(_SCHEMA)
            return conn
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error | None = None
        # mode=ro still needs the WAL index (-shm) writable; on read-only media (a mounted
        # snapshot, a CD) nobody writes the file, so immutable=1 reads it as it is.
        queries = ["mode=ro", "mode=ro&immutable=1"]
        if not _writable(self.root):  # read-only media (EROFS): go straight to immutable
            queries.reverse()
        for query in queries:
            conn = sqlite3.connect(
                f"{uri}?{query}", uri=True, timeout=self.timeout_s, isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None or int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"store {self.path} is not a sharpminima store of schema version "
                        f"<= {SCHEMA_VERSION}; check the path or upgrade sharpminima"
                    )
                return conn
            except sqlite3.Error as exc:
                conn.close()
                last = exc
            except BaseException:
                conn.close()
                raise
        assert last is not None
        raise self._error(last) from last

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment of exclusive access, and SQLite may report
        # "locked" at once instead of waiting, so retry until the timeout.
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            logger.warning("store %s runs in %s journal mode, not WAL", self.path, mode)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet: a new store
            row = None
        if row is None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}, this sharpminima knows "
                f"{SCHEMA_VERSION}; upgrade sharpminima or use another store"
            )
        # Migrations from older versions go here when SCHEMA_VERSION grows.

    def _error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return StoreError(
                f"store {self.path} stayed locked by another process for {self.timeout_s:g} s; "
                "retry, or look for a hung sharpminima process"
            )
        return StoreError(
            f"store {self.path}: {exc}; check the file is a sharpminima store "
            "and its disk is writable"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """Yield this process's connection, holding the Store's lock."""
        if self._closed:
            raise StoreError(f"store {self.root} is closed; open a new Store")
        if self._pid != os.getpid():
            # A forked child: SQLite connections must not cross fork, and a lock held
            # by a parent thread at fork time would never be released here.
            self._lock = threading.RLock()
            if self._conn is not None:
                self._inherited.append(self._conn)  # keep, never close, the parent's
            self._conn = None
            self._pid = os.getpid()
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            yield self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed if the block succeeds."""
        if self.read_only:
            raise StoreError(f"store {self.root} was opened read-only; open it without read_only to write")
        with self._locked() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._locked() as conn:
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def close(self) -> None:
        """Close the connection; further use raises :class:`StoreError`."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ runs

    def _no_run(self, run_id: str) -> StoreError:
        return StoreError(
            f"no run {run_id} in store {self.root}; list runs with `sharpminima runs list`"
        )

    def _require_run(self, conn: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._no_run(run_id)
        return row

    def get_or_create_run(
        self, config: dict, config_hash: str, kind: str = "train"
    ) -> tuple[RunRecord, bool]:
        """Return the run of ``config_hash``, creating it (status ``pending``) if new.

        Safe under concurrency: when several processes ask for the same config at once,
        exactly one creates the run and all get the same record.

        Args:
            config: The configuration (JSON-serialisable dict), stored with the run.
            config_hash: The configuration's identity (at least 12 characters of
                ``[A-Za-z0-9_-]``); the run id is its first 12 characters.
            kind: What the run is.

        Returns:
            ``(record, created)``; ``created`` is True only for the call that made it.

        Raises:
            StoreError: Bad arguments; the hash already names a run of another kind;
                another hash already took the same 12-character id.
        """
        check_dict(config, "config")
        check_text(kind, "run kind")
        if not isinstance(config_hash, str) or not _HASH_RE.fullmatch(config_hash):
            raise StoreError(
                f"config_hash must be at least {RUN_ID_LENGTH} characters of "
                f"[A-Za-z0-9_-], got {config_hash!r}"
            )
        config_json = _json.dumps(config, what="config")
        record = self.find_run(config_hash)
        created = False
        if record is None:
            version, machine = code_version(), _json.dumps(machine_info(), what="machine")
            now = utc_now()
            with self._write() as conn:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO runs (id, kind, config, config_hash, status,"
                    " created_at, updated_at, code_version, machine, summary)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, '{}')",
                    (
                        config_hash[:RUN_ID_LENGTH],
                        kind,
                        config_json,
                        config_hash,
                        now,
                        now,
                        version,
                        machine,
                    ),
                )
                created = cursor.rowcount == 1
                row = conn.execute(
                    "SELECT * FROM runs WHERE config_hash = ?", (config_hash,)
                ).fetchone()
            if row is None:
                raise StoreError(
                    f"run id {config_hash[:RUN_ID_LENGTH]} is taken by another config hash "
                    f"in store {self.root}; this is a hash-prefix collision, report it"
                )
            record = RunRecord.from_row(row)
            if created:
                logger.info("created run %s (%s)", record.id, kind)
        if record.kind != kind:
            raise StoreError(
                f"config hash {config_hash[:RUN_ID_LENGTH]} already names a {record.kind!r} "
                f"run; a {kind!r} run needs a config that hashes differently"
            )
        if not created and _json.dumps(record.config) != config_json:
            logger.warning(
                "run %s: stored config differs from the given one with the same hash; "
                "keeping the stored config",
                record.id,
            )
        return record, created

    def find_run(self, config_hash: str) -> RunRecord | None:
        """Return the run with exactly this config hash, or None.

        Args:
            config_hash: The full config hash.

        Returns:
            The run record or None.
        """
        rows = self._query("SELECT * FROM runs WHERE config_hash = ?", (config_hash,))
        return RunRecord.from_row(rows[0]) if rows else None

    def get_run(self, run_id: str) -> RunRecord:
        """Return a run by id, by a unique prefix of its id, or by its config hash.

        Args:
            run_id: Run id, unique prefix, or (a prefix of) the config hash.

        Returns:
            The run record.

        Raises:
            StoreError: No run matches, or the prefix matches several runs.
        """
        check_text(run_id, "run id")
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            rows = self._query(
                "SELECT * FROM runs WHERE substr(config_hash, 1, ?) = ? ORDER BY id LIMIT 4",
                (len(run_id), run_id),
            )
        if not rows:
            raise self._no_run(run_id)
        if len(rows) > 1:
            shown = ", ".join(row["id"] for row in rows[:3])
            raise StoreError(
                f"run prefix {run_id!r} is ambiguous in store {self.root} (matches {shown}"
                f"{', ...' if len(rows) > 3 else ''}); give more characters"
            )
        return RunRecord.from_row(rows[0])

    def list_runs(self, status: str | None = None, kind: str | None = None) -> list[RunRecord]:
        """Return runs, oldest first, optionally filtered.

        Args:
            status: Keep only runs with this status.
            kind: Keep only runs of this kind.

        Returns:
            Run records ordered by creation time.

        Raises:
            StoreError: ``status`` is not one of :data:`STATUSES`.
        """
        check_status(status)
        rows = self._query(
            "SELECT * FROM runs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR kind = ?2)"
            " ORDER BY created_at, rowid",
            (status, kind),
        )
        return [RunRecord.from_row(row) for row in rows]

    def set_status(
        self,
        run_id: str,
        status: str,
        message: str | None = None,
        summary: dict | None = None,
        *,
        worker: str | None = None,
    ) -> RunRecord:
        """Set a run's status and message, merging ``summary`` into its summary.

        Args:
            run_id: Exact run id.
            status: One of :data:`STATUSES`.
            message: Why (for ``failed``/``diverged``); None clears the old message.
            summary: Keys to add or overwrite in the stored summary (``dict.update``).
            worker: With ``"running"``: the process training it (``host:pid``), so a
                reader can tell when that process died (:meth:`RunRecord.observed_status`).
                Ignored for a run a queue worker holds (it has a heartbeat).

        Returns:
            The updated record.

        Raises:
            StoreError: Unknown status or run, or a summary that is not a JSON dict.
        """
        check_status(status)
        if summary is not None:
            check_dict(summary, "summary")
            _json.dumps(summary, what="summary")
        with self._write() as conn:
            row = self._require_run(conn, run_id)
            merged = _json.loads(row["summary"], default={})
            merged.update(summary or {})
            # Only a running run has a live heartbeat; the worker stays on record.
            conn.execute(
                "UPDATE runs SET status = ?, message = ?, summary = ?, updated_at = ?,"
                " heartbeat_at = CASE WHEN ? = 'running' THEN heartbeat_at END,"
                " worker = CASE WHEN ? IS NOT NULL AND heartbeat_at IS NULL THEN ? ELSE worker END"
                " WHERE id = ?",
                (status, message, _json.dumps(merged, what="summary"), utc_now(), status,
                 worker if status == "running" else None, worker, run_id),
            )
            row = self._require_run(conn, run_id)
        return RunRecord.from_row(row)

    def run_dir(self, run_id: str) -> Path:
        """Return ``root/runs/<run_id>/``, creating it if needed.

        Args:
            run_id: Exact run id.

        Returns:
            The folder.

        Raises:
            StoreError: No such run, or the folder cannot be created.
        """
        rows = self._query("SELECT id FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise self._no_run(run_id)
        # The id is read back from the database, which anyone may edit: never a path.
        folder = self.root / "runs" / check_run_id(rows[0]["id"])
        if self.read_only:
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create run folder {folder} ({exc.strerror or exc}); "
                "check the store folder is writable"
            ) from None
        return folder

    # ------------------------------------------------------------------ epochs

    def log_epoch(self, run_id: str, epoch: int, metrics: dict) -> None:
        """Store (or replace) the metrics of one epoch.

        Args:
            run_id: Exact run id.
            epoch: Epoch number, an int >= 0.
            metrics: JSON-serialisable dict; NaN/inf allowed. An ``"epoch"`` key must
                equal ``epoch`` and is not stored twice.

        Raises:
            StoreError: No such run, a bad epoch, or metrics that are not a JSON dict
                or name another epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise StoreError(f"epoch must be an int >= 0, got {epoch!r}")
        metrics = dict(check_dict(metrics, "metrics"))
        if metrics.pop("epoch", epoch) != epoch:
            raise StoreError(f"metrics name epoch {metrics!r} but log_epoch was given {epoch}")
        metrics_json = _json.dumps(metrics, what="metrics")
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)"
                " ON CONFLICT (run_id, epoch) DO UPDATE SET metrics = excluded.metrics",
                (run_id, epoch, metrics_json),
            )

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        """Return a run's per-epoch metrics in epoch order.

        Args:
            run_id: Exact run id.

        Returns:
            One dict per logged epoch: ``{"epoch": n, **metrics}``.

        Raises:
            StoreError: No such run.
        """
        with self._locked() as conn:
            try:
                self._require_run(conn, run_id)
                rows = conn.execute(
                    "SELECT epoch, metrics FROM epochs WHERE run_id = ? ORDER BY epoch",
                    (run_id,),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        return [{"epoch": row["epoch"], **_json.loads(row["metrics"], default={})} for row in rows]

    def truncate_epochs(self, run_id: str, after_epoch: int) -> int:
        """Delete the epochs after ``after_epoch`` (when resuming from an older checkpoint).

        Args:
            run_id: Exact run id.
            after_epoch: Last epoch to keep; -1 deletes all.

        Returns:
            Number of epochs deleted.

        Raises:
            StoreError: No such run.
        """
        with self._write() as conn:
            self._require_run(conn, run_id)
            cursor = conn.execute(
                "DELETE FROM epochs WHERE run_id = ? AND epoch > ?", (run_id, int(after_epoch))
            )
            return cursor.rowcount

    # ------------------------------------------------------------------ measurements

    def add_measurement(
        self,
        run_id: str,
        kind: str,
        params: dict,
        value: float,
        cost: dict,
        result: dict,
    ) -> int:
        """Store a measurement, replacing one with the same run, kind and params.

        Args:
            run_id: Exact run id.
            kind: What was measured (``"keskar_sharpness"``, ``"top_eigenvalues"``...).
            params: Settings that identify the measurement; hashed as canonical JSON, so
                dict order does not matter but ``1`` and ``1.0`` differ.
            value: The headline number; NaN is stored as NULL and read back as NaN.
            cost: Evaluation counts and seconds.
            result: Everything else (JSON).

        Returns:
            The measurement's row id (kept when a measurement is replaced).

        Raises:
            StoreError: No such run, or arguments of the wrong type.
        """
        check_text(kind, "measurement kind")
        params_json = _json.dumps(check_dict(params, "params"), what="params")
        cost_json = _json.dumps(check_dict(cost, "cost"), what="cost")
        result_json = _json.dumps(check_dict(result, "result"), what="result")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise StoreError(f"measurement value must be a number, got {value!r}") from None
        params_hash = _json.hash_json(params, what="params")
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT INTO measurements"
                " (run_id, kind, params, params_hash, value, cost, result, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, kind, params_hash) DO UPDATE SET value = excluded.value,"
                " cost = excluded.cost, result = excluded.result, created_at = excluded.created_at",
                (
                    run_id,
                    kind,
                    params_json,
                    params_hash,
                    None if math.isnan(number) else number,
                    cost_json,
                    result_json,
                    utc_now(),
                ),
            )
            row = conn.execute(
                "SELECT id FROM measurements WHERE run_id = ? AND kind = ? AND params_hash = ?",
                (run_id, kind, params_hash),
            ).fetchone()
        return int(row["id"])

    def get_measurement(self, run_id: str, kind: str, params: dict) -> dict[str, Any] | None:
        """Return the measurement with these run, kind and params, or None.

        Args:
            run_id: Exact run id.
            kind: Measurement kind.
            params: Its params (any dict order).

        Returns:
            ``{"id", "run_id", "kind", "params", "params_hash", "value", "cost",
            "result", "created_at"}`` or None.
        """
        params_hash = _json.hash_json(params, what="params")
        rows = self._query(
            "SELECT * FROM measurements WHERE run_id = ? AND kind = ? AND params_hash = ?",
            (run_id, kind, params_hash),
        )
        return measurement_from_row(rows[0]) if rows else None

    def to_pandas(self, *, status: str | None = None, kind: str | None = None) -> Any:
        """Every run as one row of a ``pandas.DataFrame``: config fields, status, results, measures.

        See :mod:`sharpminima.store.table` for the columns.

        Args:
            status: Keep only runs with this status.
            kind: Keep only runs of this kind.

        Returns:
            The table.

        Raises:
            ConfigError: pandas is not installed (``pip install 'sharpminima[export]'``).
        """
        from sharpminima.store.table import to_pandas

        return to_pandas(self, status=status, kind=kind)

    def measurements(
        self, run_id: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """Return measurements in the order they were first stored, optionally filtered.

        Args:
            run_id: Keep only this run's.
            kind: Keep only this kind.

        Returns:
            Measurement dicts as :meth:`get_measurement` returns them.
        """
        rows = self._query(
            "SELECT * FROM measurements WHERE (?1 IS NULL OR run_id = ?1)"
            " AND (?2 IS NULL OR kind = ?2) ORDER BY id",
            (run_id, kind),
        )
        return [measurement_from_row(row) for row in rows]


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
