"""The on-disk dataset cache: one ``.npz`` file per dataset in :func:`data_dir`.

A cache file holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` and ``meta_json`` (a
0-d unicode array with JSON: source, checksums of the source files, pixel scale, class
names, sizes, format version). Images are stored as the original uint8 bytes with their
``pixel_scale`` (256 for the deeplearning.net MNIST pickle, 255 for IDX and CIFAR), so
``x = byte / pixel_scale`` rebuilds the float32 pixels exactly; feature data (TIMIT) is
stored as float32. Everything loads with ``np.load(allow_pickle=False)``, and files are
written atomically, so a crash never leaves a partial cache.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sharpminima.data.base import Dataset
from sharpminima.data.safe_io import (
    LIBRARY_ERRORS,
    check_num_classes,
    one_line,
    read_npz,
    save_npz,
    sha256_file,
)
from sharpminima.errors import DataError

__all__ = [
    "CACHED_NAMES",
    "FORMAT_VERSION",
    "RawData",
    "cache_info",
    "cache_path",
    "check_float32_features",
    "data_dir",
    "read_cache",
    "read_cache_meta",
    "validate_raw",
    "write_cache",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHED_NAMES = ("mnist", "cifar10", "cifar100", "timit")
DEFAULT_DATA_DIR = "~/.cache/sharpminima"
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds the dataset cache (it is not created here).

    Args:
        root: Explicit folder; wins over everything else.

    Returns:
        ``root`` if given, else ``$SHARPMINIMA_DATA`` if set and non-empty, else
        ``~/.cache/sharpminima``; ``~`` is expanded.

    """
    chosen = root if root is not None else os.environ.get("SHARPMINIMA_DATA") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def cache_path(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache file of dataset ``name`` (``<data_dir>/<name>.npz``)."""
    return data_dir(root) / f"{name}.npz"


@dataclass(frozen=True)
class RawData:
    """Arrays of a dataset as read from its source, before conversion to tensors.

    Attributes:
        name: Dataset name (``"mnist"``, ``"cifar10"``...).
        x_train: Either uint8 images ``(N, C, H, W)`` (then ``pixel_scale`` is set) or
            float32 features ``(N, d)``.
        y_train: Int64 labels, shape ``(N,)``.
        x_test: Test inputs, same layout as ``x_train``.
        y_test: Int64 test labels, shape ``(M,)``.
        num_classes: Number of classes.
        source: Where the data came from (absolute path or ``pypi:...``).
        pixel_scale: Float pixels are ``byte / pixel_scale``; None for float features.
        checksums: Checksums of the source files, e.g. ``{"wheel_sha256": ...}``.
        class_names: Human-readable class names, if the source has them.

    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    pixel_scale: float | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    class_names: tuple[str, ...] = ()

    def meta(self) -> dict[str, Any]:
        """Return the JSON-able description stored next to the arrays."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "source": self.source,
            "checksums": dict(self.checksums),
            "pixel_scale": self.pixel_scale,
            "num_classes": int(self.num_classes),
            "class_names": list(self.class_names),
            "num_train": int(self.x_train.shape[0]),
            "num_test": int(self.x_test.shape[0]),
            "input_shape": [int(s) for s in self.x_train.shape[1:]],
        }

    def to_dataset(self, extra_meta: dict[str, Any] | None = None) -> Dataset:
        """Convert to a :class:`Dataset` of float32 inputs and int64 labels.

        Images become ``byte / pixel_scale`` in float32 (exact for a scale of 256; for 255
        the same rounding as ``torch.ByteTensor.float().div(255)``).

        Args:
            extra_meta: Entries added to ``Dataset.meta`` (e.g. the cache path).

        Returns:
            The dataset.

        """
        meta = {
            "pixel_scale": self.pixel_scale,
            "checksums": dict(self.checksums),
            "class_names": list(self.class_names),
            **(extra_meta or {}),
        }
        return Dataset(
            name=self.name,
            x_train=self._inputs(self.x_train),
            y_train=torch.from_numpy(np.ascontiguousarray(self.y_train, dtype=np.int64)),
            x_test=self._inputs(self.x_test),
            y_test=torch.from_numpy(np.ascontiguousarray(self.y_test, dtype=np.int64)),
            num_classes=int(self.num_classes),
            source=self.source,
            meta=meta,
        )

    def _inputs(self, x: np.ndarray) -> torch.Tensor:
        if self.pixel_scale is None:
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(self.pixel_scale)


def write_cache(raw: RawData, path: str | os.PathLike[str]) -> Path:
    """Write ``raw`` atomically to the cache file ``path``.

    uint8 images are deflated (MNIST: 55 MB -> about 11 MB); float features are stored
    uncompressed because they barely compress and load faster that way.

    Args:
        raw: The dataset arrays.
        path: Destination ``.npz``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: The folder cannot be created or written.

    """
    meta = raw.meta()
    meta["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    save_npz(
        path,
        compress=raw.x_train.dtype == np.uint8,
        x_train=raw.x_train,
        y_train=np.asarray(raw.y_train, dtype=np.int64),
        x_test=raw.x_test,
        y_test=np.asarray(raw.y_test, dtype=np.int64),
        meta_json=np.array(json.dumps(meta)),
    )
    log.info("wrote %s (%d train / %d test)", path, meta["num_train"], meta["num_test"])
    return Path(path)


def _refetch_hint(path: Path) -> str:
    return f"delete it ({path}) and fetch again with `sharpminima data fetch {path.stem} --force`"


def _unreadable(path: Path, reason: str) -> DataError:
    return DataError(f"{path}: unreadable dataset cache ({reason}); {_refetch_hint(path)}")


def _read_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a cache file, read with every size checked first."""
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: no such cache file; run `sharpminima data fetch {path.stem}`")
    hint = _refetch_hint(path)
    try:
        return read_npz(path, required=keys, hint=hint)
    except DataError as exc:
        raise _unreadable(path, str(exc).removeprefix(f"{path}: ").removesuffix(f"; {hint}")) from exc


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def validate_raw(raw: RawData, where: str) -> None:
    """Check dataset arrays before they are cached or used (each split, labels, classes).

    Every check is in the type the data will have in training: float features must be
    finite *after* the cast to float32 (``1e300`` passes a float64 finite check but
    becomes ``inf``), and each split needs at least one sample.

    Args:
        raw: The arrays.
        where: The file for messages.

    Raises:
        DataError: Empty split, mismatched rows or sample shapes, labels that are not
            integers in ``[0, num_classes)``, a bad ``num_classes`` (see
            :data:`~sharpminima.data.safe_io.MAX_NUM_CLASSES`), a bad ``pixel_scale``,
            or features that are not finite in float32.

    """
    num_classes = check_num_classes(raw.num_classes, where)
    scale = raw.pixel_scale
    if scale is not None and not (isinstance(scale, float | int) and 0 < scale < float("inf")):
        raise DataError(f"{where}: pixel_scale must be a positive number, got {scale!r:.40}")
    for split in ("train", "test"):
        x, y = getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}")
        if x.ndim < 2 or y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(
                f"{where}: x_{split} is {x.dtype} {x.shape} and y_{split} {y.dtype} {y.shape}; "
                "expected inputs [N, ...] and integer labels [N]"
            )
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{where}: x_{split} has {x.shape[0]} rows but y_{split} {y.shape[0]} labels")
        if x.shape[0] == 0:
            raise DataError(f"{where}: the {split} split has no rows; a split needs at least one sample")
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(
                f"{where}: y_{split} spans [{y.min()}, {y.max()}], expected [0, {num_classes - 1}]"
            )
        if scale is not None and x.dtype != np.uint8:
            raise DataError(f"{where}: x_{split} is {x.dtype}, expected uint8 pixels (pixel_scale is set)")
        if scale is None:
            check_float32_features(x, f"{where}: x_{split}")
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise DataError(
            f"{where}: training samples have shape {raw.x_train.shape[1:]} but test samples "
            f"{raw.x_test.shape[1:]}"
        )


def check_float32_features(x: np.ndarray, what: str) -> None:
    """Check that float features are finite, also once cast to float32.

    Args:
        x: The features (any float dtype).
        what: The array for messages (``"file: x_train"``).

    Raises:
        DataError: Not floating point, NaN or infinite values, or values beyond float32's
            range (about 3.4e38), which the cast turns into infinities.

    """
    if x.dtype.kind != "f":
        raise DataError(f"{what} is {x.dtype}, expected floating point features")
    if not x.size:
        return
    lo, hi = float(x.min()), float(x.max())  # NaN propagates; no copy of x is made
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{what} contains NaN or infinite values")
    largest = max(abs(lo), abs(hi))
    if largest > _FLOAT32_MAX:
        raise DataError(
            f"{what} has values up to {largest:.3g}, beyond float32's range (about 3.4e38): "
            "they would become infinite in training; rescale the features"
        )


def read_cache_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON description of a cache file (the arrays stay on disk).

    Args:
        path: The cache ``.npz``.

    Returns:
        The dict written by :func:`write_cache`.

    Raises:
        DataError: The file is missing, corrupt, or from another format version.

    """
    path = Path(path)
    text = _read_arrays(path, ("meta_json",))["meta_json"]
    if text.shape != () or text.dtype.kind != "U":
        raise _unreadable(path, f"meta_json is {text.dtype} {text.shape}, expected one string")
    try:
        meta = json.loads(str(text[()]))
    except LIBRARY_ERRORS as exc:  # JSONDecodeError, RecursionError of deep nesting
        raise _unreadable(path, f"meta_json: {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise _unreadable(path, f"format version is not {FORMAT_VERSION}")
    return meta


def read_cache(path: str | os.PathLike[str]) -> RawData:
    """Read a cache file written by :func:`write_cache`.

    Args:
        path: The cache ``.npz``.

    Returns:
        The arrays and their description.

    Raises:
        DataError: The file is missing, corrupt, or from another format version.

    """
    path = Path(path)
    meta = read_cache_meta(path)
    arrays = _read_arrays(path, _ARRAY_KEYS)
    try:
        scale = meta["pixel_scale"]
        raw = RawData(
            name=str(meta["name"]),
            num_classes=meta["num_classes"],
            source=str(meta["source"]),
            pixel_scale=None if scale is None else float(scale),
            checksums={str(k): str(v) for k, v in dict(meta["checksums"]).items()},
            class_names=tuple(str(n) for n in meta["class_names"]),
            **arrays,
        )
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise _unreadable(path, f"{type(exc).__name__}: {one_line(exc)}") from exc
    if raw.x_train.shape[0] != meta["num_train"] or raw.x_test.shape[0] != meta["num_test"]:
        raise _unreadable(path, "array sizes disagree with its description")
    try:
        validate_raw(raw, str(path))
    except DataError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise _unreadable(path, reason) from exc
    return raw


def cache_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe one cache file without loading its arrays.

    Args:
        path: The cache ``.npz``.

    Returns:
        ``name``, ``path``, ``file_bytes``, ``sha256`` (of the cache file) and the stored
        description (``source``, ``checksums``, ``num_train``, ``num_test``,
        ``input_shape``, ``num_classes``, ``created``...). An unreadable file gives
        ``name``, ``path``, ``file_bytes`` and ``error`` instead of raising.

    """
    path = Path(path)
    entry: dict[str, Any] = {
        "name": path.stem,
        "path": str(path),
        "file_bytes": path.stat().st_size,
    }
    try:
        meta = read_cache_meta(path)
    except DataError as exc:
        entry["error"] = str(exc)
        return entry
    entry["sha256"] = sha256_file(path)
    entry.update({k: v for k, v in meta.items() if k != "class_names"})
    entry["name"] = path.stem
    return entry
