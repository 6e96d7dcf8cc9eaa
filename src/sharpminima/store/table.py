"""The store as one table: a row per run, config fields, status, results and measures as columns.

What a big sweep is read back as (``Store.to_pandas()``, ``sharpminima runs export``):

* ``run_id``, ``kind``, ``status``, ``message``, ``created_at``, ``updated_at``,
  ``code_version``;
* every config field under its own name (``batch_size``, ``lr``, ``seed``...); lists and
  dicts as compact JSON text, so every column has one scalar type;
* every summary result under its own name (``train_loss``, ``test_acc``, ``seconds``...),
  or ``trained_<name>`` where it would collide with a config field (``trained_epochs``:
  the epochs a run actually trained, against ``epochs``, the cap it was given);
* every measurement's headline value as ``<kind>`` when the run has one measurement of
  that kind, else ``<kind>[<param>=<value>,...]`` naming the params that differ between
  that kind's measurements (``keskar_sharpness[eps=0.001]``).

Runs of different kinds (``train``, ``external``) share one table; columns a run lacks
are empty.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from sharpminima.errors import ConfigError

__all__ = ["EXPORT_FORMATS", "export_runs", "run_rows", "to_pandas"]

EXPORT_FORMATS = ("csv", "parquet")
_FIXED = ("run_id", "kind", "status", "message", "created_at", "updated_at", "code_version")


def _scalar(value: Any) -> Any:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def _measure_names(measurements: list[dict[str, Any]]) -> dict[int, str]:
    """A column name per measurement id: its kind, plus the params that tell it apart."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in measurements:
        by_kind[m["kind"]].append(m)
    names: dict[int, str] = {}
    for kind, rows in by_kind.items():
        keys = sorted({k for m in rows for k in m["params"]})
        varying = [k for k in keys if len({json.dumps(m["params"].get(k), sort_keys=True) for m in rows}) > 1]
        for m in rows:
            if not varying:
                names[m["id"]] = kind
            else:
                parts = ",".join(f"{k}={_scalar(m['params'].get(k))}" for k in varying)
                names[m["id"]] = f"{kind}[{parts}]"
    return names


def run_rows(store: Any, *, status: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """One flat dict per run (see the module's docstring for the columns).

    Args:
        store: The run store.
        status: Keep only runs with this status.
        kind: Keep only runs of this kind.

    Returns:
        The rows, oldest run first.
    """
    runs = store.list_runs(status=status, kind=kind)
    measurements = store.measurements()
    names = _measure_names(measurements)
    per_run: dict[str, dict[str, Any]] = defaultdict(dict)
    for m in measurements:
        value = m["value"]
        missing = isinstance(value, float) and math.isnan(value)
        per_run[m["run_id"]][names[m["id"]]] = None if missing else value
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.id, "kind": run.kind, "status": run.status, "message": run.message,
            "created_at": run.created_at, "updated_at": run.updated_at, "code_version": run.code_version,
        }
        for key, value in run.config.items():
            row[key if key not in _FIXED else f"config_{key}"] = _scalar(value)
        for key, value in run.summary.items():
            row[f"trained_{key}" if key in row else key] = _scalar(value)
        row.update(per_run.get(run.id, {}))
        rows.append(row)
    return rows


def to_pandas(store: Any, **filters: Any) -> Any:
    """The runs as a ``pandas.DataFrame`` (one row per run); see :func:`run_rows`.

    Raises:
        ConfigError: pandas is not installed.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError(
            "Store.to_pandas needs pandas; install it with: pip install 'sharpminima[export]'"
        ) from None
    rows = run_rows(store, **filters)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return pd.DataFrame(rows, columns=columns or list(_FIXED))


def export_runs(store: Any, path: str | Path, fmt: str | None = None, **filters: Any) -> int:
    """Write the runs table to ``path`` as CSV or Parquet, atomically.

    Args:
        store: The run store.
        path: Output file.
        fmt: ``csv`` or ``parquet`` (default: from the file's suffix).
        **filters: ``status``/``kind`` as for :func:`run_rows`.

    Returns:
        The number of runs written.

    Raises:
        ConfigError: An unknown format, or pandas/pyarrow missing for it.
    """
    from sharpminima.atomic import atomic_target
    from sharpminima.errors import StoreError

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the export a file name, e.g. {path / ('runs.' + fmt)}")
    frame = to_pandas(store, **filters)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("--format parquet needs pyarrow; install it with: "
                              "pip install 'sharpminima[export]'") from None

    def error(p: Path, exc: OSError) -> StoreError:
        return StoreError(
            f"cannot write {p} ({exc.strerror or exc}); check the folder exists and is writable"
        )

    with atomic_target(path, error) as fh:
        if fmt == "csv":
            frame.to_csv(fh, index=False)
        else:
            frame.to_parquet(fh, index=False)
    return len(frame)
