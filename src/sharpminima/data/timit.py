"""TIMIT frame features the user brings as an ``.npz`` (TIMIT is licensed; no download).

The file must hold ``x_train`` float ``[N, d]``, ``y_train`` int ``[N]``, ``x_test`` float
``[M, d]`` and ``y_test`` int ``[M]``; an optional scalar ``num_classes`` defaults to 1973,
the number of output classes of the paper's F2 network (Keskar et al. 2017, App. B:
input 360 -> 7 x 512 -> 1973). It is read with ``np.load(allow_pickle=False)``, so a file
with pickled objects is refused rather than executed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sharpminima.data.cache import RawData, check_float32_features
from sharpminima.data.safe_io import check_num_classes, read_npz, sha256_file
from sharpminima.errors import DataError

__all__ = ["DEFAULT_NUM_CLASSES", "REQUIRED_KEYS", "read_timit_npz"]

DEFAULT_NUM_CLASSES = 1973
REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
_LAYOUT = "x_train float [N, d], y_train int [N], x_test float [M, d], y_test int [M]"
_HINT = f"expected an .npz with {_LAYOUT} (save it with np.savez)"


def _num_classes(arrays: dict[str, np.ndarray], path: Path) -> int:
    if "num_classes" not in arrays:
        return DEFAULT_NUM_CLASSES
    value = arrays["num_classes"]
    if value.size != 1 or value.dtype.kind not in "iu":
        raise DataError(f"{path}: num_classes must be one integer >= 2, got {value.dtype} {value.shape}")
    return check_num_classes(value.reshape(())[()], str(path))


def read_timit_npz(path: str | os.PathLike[str]) -> RawData:
    """Read and validate a TIMIT features ``.npz``.

    Args:
        path: The ``.npz`` file.

    Returns:
        float32 features ``(N, d)``, int64 labels, ``num_classes`` (1973 unless the file
        says otherwise) and the file's SHA-256.

    Raises:
        DataError: Missing or unreadable file, pickled objects, missing keys, wrong
            ``ndim`` or dtype, mismatched sample counts or feature sizes, no training
            samples, non-finite features, bad ``num_classes``, or labels out of range.

    """
    path = Path(path).expanduser()
    arrays = read_npz(path, required=REQUIRED_KEYS, optional=("num_classes",), hint=_HINT)
    num_classes = _num_classes(arrays, path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 2 or y.ndim != 1:
            raise DataError(
                f"{path}: x_{split} has shape {x.shape} and y_{split} {y.shape}; expected {_LAYOUT}"
            )
        if y.dtype.kind not in "iu":
            raise DataError(f"{path}: y_{split} is {y.dtype}, expected integer labels")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{path}: x_{split} has {x.shape[0]} rows but y_{split} {y.shape[0]} labels")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(
                f"{path}: y_{split} spans [{y.min()}, {y.max()}], expected [0, {num_classes - 1}]"
                " (store num_classes in the file if it differs from 1973)"
            )
        if x.shape[0] == 0:
            raise DataError(f"{path}: x_{split} has no rows; each split needs at least one sample")
        check_float32_features(x, f"{path}: x_{split}")  # finite in float32, not only float64
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"{path}: x_train has {x_train.shape[1]} features but x_test {x_test.shape[1]}")
    return RawData(
        name="timit",
        x_train=x_train.astype(np.float32, copy=False),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=x_test.astype(np.float32, copy=False),
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=num_classes,
        source=str(path.resolve()),
        checksums={"npz_sha256": sha256_file(path)},
    )
