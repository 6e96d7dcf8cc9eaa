"""Moving a finished run between stores: what a remote worker returns to the driver.

On a cluster (``--backend ray`` or ``slurm``) no worker writes the user's store. A worker
trains in a private temporary store and returns the run as a :class:`RunBundle`: its row
(config, status, message, summary, code version, machine), its epoch metrics, its
measurements and the bytes of every file in its run folder (safetensors checkpoints and
their JSON sidecars). The driver, the store's only writer, then imports the bundle:
files first (each written atomically), then every row in one transaction. A driver killed
between the two leaves the run ``pending`` with stray but harmless files that the next
import replaces, so a run is in the store exactly once, whole or not at all.

Bundles are plain dicts of builtins and bytes, so any transport (Ray's object store,
submitit's pickled results) carries them.
"""

# ruff: noqa: D413

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any

from sharpminima.errors import StoreError
from sharpminima.store import _json
from sharpminima.store.checkpoints import atomic_write_bytes

__all__ = ["BUNDLE_FORMAT", "MAX_BUNDLE_BYTES", "RunBundle", "export_run", "import_run"]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "sharpminima.run-bundle/1"
#: The largest run folder a bundle carries (16 GiB): a guard against a runaway run folder.
MAX_BUNDLE_BYTES = 16 << 30

RunBundle = dict[str, Any]
"""``{"format", "run": {...row...}, "epochs": [[epoch, metrics]], "measurements": [...],
"files": {relative posix path: bytes}}``."""

_ID_RE = re.compile(r"[A-Za-z0-9_-]{12}")
_RUN_COLUMNS = (
    "id", "kind", "config", "config_hash", "status", "message", "created_at", "updated_at",
    "code_version", "machine", "summary",
)
_MEASUREMENT_COLUMNS = ("kind", "params", "params_hash", "value", "cost", "result", "created_at")


def export_run(store: Any, run_id: str) -> RunBundle:
    """Return run ``run_id`` of ``store`` as a self-contained bundle.

    Args:
        store: The (usually temporary) store that holds the run.
        run_id: Exact run id.

    Returns:
        The bundle.

    Raises:
        StoreError: No such run, or its folder holds more than :data:`MAX_BUNDLE_BYTES`,
            a link or something that is not a plain file.
    """
    with store._locked() as conn:
        row = store._require_run(conn, run_id)
        run = {name: row[name] for name in _RUN_COLUMNS}
        epochs = [
            [r["epoch"], r["metrics"]]
            for r in conn.execute(
                "SELECT epoch, metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)
            )
        ]
        measurements = [
            {name: r[name] for name in _MEASUREMENT_COLUMNS}
            for r in conn.execute("SELECT * FROM measurements WHERE run_id = ? ORDER BY id", (run_id,))
        ]
    folder = Path(store.root) / "runs" / run_id
    files: dict[str, bytes] = {}
    total = 0
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise StoreError(f"run {run_id}: {path} is not a plain file; a run folder holds only files")
            if path.is_dir() or path.name.startswith("."):  # temp files of an atomic write
                continue
            total += path.stat().st_size
            if total > MAX_BUNDLE_BYTES:
                raise StoreError(
                    f"run {run_id}: its folder holds more than {MAX_BUNDLE_BYTES >> 30} GiB, too much "
                    "to send back from a cluster worker; train it with the local backend"
                )
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return {"format": BUNDLE_FORMAT, "run": run, "epochs": epochs, "measurements": measurements,
            "files": files}


def _check_bundle(bundle: Any) -> RunBundle:
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise StoreError("not a sharpminima run bundle (wrong format); was it made by another version?")
    run = bundle.get("run")
    if not isinstance(run, dict) or any(name not in run for name in _RUN_COLUMNS):
        raise StoreError("run bundle without a complete run row; it cannot be imported")
    files = bundle.get("files")
    if not isinstance(files, dict):
        raise StoreError("run bundle without a files table; it cannot be imported")
    for name, data in files.items():
        path = PurePosixPath(name) if isinstance(name, str) else None
        if path is None or path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name:
            raise StoreError(f"run bundle names a file outside its run folder ({name!r}); refusing it")
        if not isinstance(data, bytes | bytearray):
            raise StoreError(f"run bundle file {name!r} is not bytes; refusing it")
    return bundle


def import_run(store: Any, bundle: RunBundle, *, replace: bool = False) -> str:
    """Write a bundle's run into ``store``: its files, then its rows in one transaction.

    A run that is already finished (``done`` or ``diverged``) in ``store`` is kept as it
    is unless ``replace``: importing the same bundle twice leaves one run.

    Args:
        store: The destination store.
        bundle: What :func:`export_run` returned.
        replace: Overwrite a finished run of the same id.

    Returns:
        The run id.

    Raises:
        StoreError: A malformed bundle, a run id that is taken by another config hash, or
            a store that cannot be written.
    """
    bundle = _check_bundle(bundle)
    run = bundle["run"]
    run_id, config_hash = str(run["id"]), str(run["config_hash"])
    if len(run_id) != 12 or not config_hash.startswith(run_id) or not _ID_RE.fullmatch(run_id):
        raise StoreError(f"run bundle has a malformed run id {run_id!r}; refusing it")
    existing = store._query("SELECT config_hash, status FROM runs WHERE id = ?", (run_id,))
    if existing and existing[0]["config_hash"] != config_hash:
        raise StoreError(f"run id {run_id} is taken by another config in store {store.root}; report this")
    if existing and existing[0]["status"] in ("done", "diverged") and not replace:
        log.info("run %s is already finished in %s; bundle ignored", run_id, store.root)
        return run_id
    folder = Path(store.root) / "runs" / run_id
    for name, data in bundle["files"].items():
        atomic_write_bytes(folder / PurePosixPath(name), bytes(data))
    _json.loads(run["config"], default={})  # a readable row, or StoreError before writing
    with store._write() as conn:
        conn.execute(
            "INSERT INTO runs (id, kind, config, config_hash, status, message, created_at,"
            " updated_at, code_version, machine, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status, message = excluded.message,"
            " updated_at = excluded.updated_at, code_version = excluded.code_version,"
            " machine = excluded.machine, summary = excluded.summary, worker = NULL, heartbeat_at = NULL",
            tuple(run[name] for name in _RUN_COLUMNS),
        )
        conn.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
        conn.executemany(
            "INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
            [(run_id, int(epoch), metrics) for epoch, metrics in bundle.get("epochs", [])],
        )
        for m in bundle.get("measurements", []):
            conn.execute(
                "INSERT INTO measurements"
                " (run_id, kind, params, params_hash, value, cost, result, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, kind, params_hash) DO UPDATE SET"
                " value = excluded.value, cost = excluded.cost, result = excluded.result,"
                " created_at = excluded.created_at",
                (run_id, *(m[name] for name in _MEASUREMENT_COLUMNS)),
            )
    log.info("imported run %s (%s, %d files)", run_id, run["status"], len(bundle["files"]))
    return run_id
