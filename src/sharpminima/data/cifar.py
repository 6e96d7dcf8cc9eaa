"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

The archives cannot be downloaded here; the user passes ``cifar-10-python.tar.gz`` or
``cifar-100-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html). Their MD5 is
checked against the published value, then the batches are read straight from the
``tar.gz`` member streams (nothing is extracted to disk) with the restricted unpickler.

Each batch is a Python 2 pickle of a dict with bytes keys: ``b"data"`` is uint8
``(n, 3072)``, each row a 32 x 32 image stored channel by channel (1024 red, 1024 green,
1024 blue values, each plane row-major), so ``data.reshape(n, 3, 32, 32)`` is ``(N, C, H,
W)``. CIFAR-10 labels are ``b"labels"``; CIFAR-100 has ``b"fine_labels"`` (used here: 100
classes) and ``b"coarse_labels"`` (20 superclasses, not used). Pixels are ``byte / 255``.
"""

from __future__ import annotations

import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharpminima.data.cache import RawData
from sharpminima.data.safe_io import (
    LIBRARY_ERRORS,
    md5_file,
    one_line,
    open_payload,
    open_regular,
    restricted_load,
    sha256_file,
)
from sharpminima.errors import DataError

__all__ = ["CIFAR10", "CIFAR100", "CifarSpec", "read_cifar"]

log = logging.getLogger(__name__)

ROW_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    """Layout of one official CIFAR archive.

    Attributes:
        name: Dataset name (``"cifar10"`` or ``"cifar100"``).
        title: Name for messages (``"CIFAR-10"``).
        archive: Official archive file name.
        md5: Published MD5 of the archive.
        folder: Top folder inside the archive.
        train_members: Training batch files, in order.
        test_member: Test batch file.
        meta_member: File holding the class names.
        label_key: Batch dict key of the labels.
        names_key: Meta dict key of the class names.
        num_classes: Number of classes.

    """

    name: str
    title: str
    archive: str
    md5: str
    folder: str
    train_members: tuple[str, ...]
    test_member: str
    meta_member: str
    label_key: bytes
    names_key: bytes
    num_classes: int


CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_member="test_batch",
    meta_member="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
)
CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_members=("train",),
    test_member="test",
    meta_member="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
)
SPECS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


def _read_members(path: Path, spec: CifarSpec) -> dict[str, object]:
    """Unpickle the wanted members in one sequential pass over the archive stream.

    The archive is read as a stream (tar mode ``r|``) through
    :func:`~sharpminima.data.safe_io.open_payload`, so gzip, bzip2 and xz archives are
    recognised by content and their decompressed size is capped: a bomb stops early.
    Each member is unpickled with at most its stated size of stream.
    """
    wanted = {
        f"{spec.folder}/{m}" for m in (*spec.train_members, spec.test_member, spec.meta_member)
    }
    found: dict[str, object] = {}
    try:
        with open_regular(path) as fh:
            payload = open_payload(fh, what=str(path), size=os.fstat(fh.fileno()).st_size)
            with tarfile.open(fileobj=payload.stream, mode="r|") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name in wanted and member.isfile() and name not in found:
                        stream = tar.extractfile(member)
                        found[name] = restricted_load(
                            stream, path=f"{path}!{name}", encoding="bytes", max_bytes=member.size
                        )
    except DataError:
        raise
    except LIBRARY_ERRORS as exc:
        raise DataError(
            f"{path}: corrupt or truncated archive ({type(exc).__name__}: {one_line(exc)}); "
            f"download the official {spec.archive} again"
        ) from exc
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(
            f"{path}: archive lacks {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f"; expected the official {spec.archive}"
        )
    return found


def _batch(obj: object, where: str, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Validate one batch dict; return images ``(n, 3, 32, 32)`` uint8 and int64 labels."""
    if not isinstance(obj, dict) or b"data" not in obj or spec.label_key not in obj:
        shown = sorted(repr(k)[:40] for k in obj)[:8] if isinstance(obj, dict) else []
        keys = f"[{', '.join(shown)}]" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{where}: expected a dict with keys b'data' and {spec.label_key!r}, got {keys}"
        )
    data = obj[b"data"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == ROW_BYTES
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' is {got}, expected uint8 rows of {ROW_BYTES} (3x32x32)")
    labels = _labels(obj[spec.label_key])
    if (
        labels.ndim != 1
        or labels.shape[0] != data.shape[0]
        or (labels.size and labels.dtype.kind not in "iu")
    ):
        raise DataError(
            f"{where}: {spec.label_key!r} is {labels.dtype} {labels.shape}, expected "
            f"{data.shape[0]} integer labels (one per image)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(
            f"{where}: labels span [{labels.min()}, {labels.max()}], "
            f"expected [0, {spec.num_classes - 1}]"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # (n, C, H, W)


def _labels(value: object) -> np.ndarray:
    """The labels as an array, without letting numpy walk a hostile nested list.

    A pickle can nest one shared list in itself, so ``np.asarray`` of a few hundred bytes
    could build an array of billions of elements; only a flat list of scalars (or an
    array) is converted. Anything else becomes a 0-d array that the caller reports.
    """
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list) and all(type(v) in (int, float, bool, bytes, str) for v in value):
        return np.asarray(value)  # ints beyond int64 give an object array, reported
    return np.asarray(None)


def _class_names(obj: object, where: str, spec: CifarSpec) -> tuple[str, ...]:
    names = obj.get(spec.names_key) if isinstance(obj, dict) else None
    if (
        not isinstance(names, list)
        or len(names) != spec.num_classes
        or not all(isinstance(n, bytes | str) for n in names)
    ):
        raise DataError(f"{where}: expected {spec.names_key!r} with {spec.num_classes} class names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def read_cifar(
    path: str | os.PathLike[str],
    name: str = "cifar10",
    *,
    verify: bool = True,
    expected_md5: str | None = None,
) -> RawData:
    """Read an official CIFAR "python version" archive.

    Args:
        path: ``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz``.
        name: ``"cifar10"`` or ``"cifar100"``.
        verify: Check the archive's MD5 (default). False skips it (logged as a warning).
        expected_md5: MD5 to require instead of the published one (e.g. for a test
            archive); ignored when ``verify`` is False.

    Returns:
        uint8 images ``(N, 3, 32, 32)`` with ``pixel_scale`` 255, int64 labels (fine
        labels for CIFAR-100), class names, and the archive's MD5 and SHA-256.

    Raises:
        DataError: Unknown name, missing file, MD5 mismatch, corrupt or truncated
            archive, missing members, refused pickle globals, or batches with the
            wrong keys, shapes, dtypes or labels.

    """
    if name not in SPECS:
        raise DataError(f"unknown CIFAR variant {name!r}; choose cifar10 or cifar100")
    spec = SPECS[name]
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; pass the official {spec.archive} "
            "(https://www.cs.toronto.edu/~kriz/cifar.html) with --from PATH"
        )
    md5 = md5_file(path)
    if verify:
        expected = (expected_md5 or spec.md5).lower()
        if md5 != expected:
            raise DataError(
                f"{path}: md5 {md5} does not match the expected {expected} of the official "
                f"{spec.archive}; download it again"
            )
    else:
        log.warning("%s: md5 check skipped (md5 %s)", path, md5)
    members = _read_members(path, spec)

    def where(member: str) -> str:
        return f"{path}!{spec.folder}/{member}"

    train = [_batch(members[f"{spec.folder}/{m}"], where(m), spec) for m in spec.train_members]
    x_test, y_test = _batch(
        members[f"{spec.folder}/{spec.test_member}"], where(spec.test_member), spec
    )
    class_names = _class_names(
        members[f"{spec.folder}/{spec.meta_member}"], where(spec.meta_member), spec
    )
    return RawData(
        name=spec.name,
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        num_classes=spec.num_classes,
        source=str(path.resolve()),
        pixel_scale=255.0,
        checksums={"archive_md5": md5, "archive_sha256": sha256_file(path)},
        class_names=class_names,
    )
