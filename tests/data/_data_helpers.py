"""Writers of small files in the exact layouts of the real dataset sources.

Imported by the data tests as ``import _data_helpers as helpers`` (a unique module name:
a ``conftest.py`` here would shadow ``tests/conftest.py`` for ``from conftest import``).

``py2_dumps`` emits the opcode stream Python 2's cPickle (protocol 2) produced for the
objects found in the CIFAR batches and the deeplearning.net MNIST pickle: Python 2
``str`` as SHORT_BINSTRING/BINSTRING (``bytes`` here), numpy arrays through
``numpy.core.multiarray._reconstruct`` with the raw buffer as a ``str``. Python 3's
pickler cannot produce that (it pickles ``bytes`` via ``_codecs.encode``), and the
restricted unpickler must read the real files, so the tests build them by hand.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- Python 2 pickles


def py2_dumps(obj: object) -> bytes:
    out = bytearray(b"\x80\x02")  # PROTO 2

    def put(o: object) -> None:
        if isinstance(o, dict):
            out.extend(b"}")  # EMPTY_DICT
            if o:
                out.extend(b"(")  # MARK
                for key, value in o.items():
                    put(key)
                    put(value)
                out.extend(b"u")  # SETITEMS
        elif isinstance(o, list):
            out.extend(b"]")  # EMPTY_LIST
            if o:
                out.extend(b"(")
                for item in o:
                    put(item)
                out.extend(b"e")  # APPENDS
        elif isinstance(o, tuple):
            out.extend(b"(")
            for item in o:
                put(item)
            out.extend(b"t")  # TUPLE
        elif o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):  # a Python 2 str
            if len(o) < 256:
                out.extend(b"U" + bytes([len(o)]) + o)
            else:
                out.extend(b"T" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, str):  # a Python 2 unicode
            raw = o.encode("utf-8")
            out.extend(b"X" + struct.pack("<I", len(raw)) + raw)
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n")
            out.extend(b"cnumpy\nndarray\n")
            put((0,))
            put(b"b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE
            out.extend(b"(")
            put(1)
            put(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            put(o.dtype.str[1:].encode())
            put(0)
            put(1)
            out.extend(b"\x87R")
            put((3, o.dtype.str[:1].encode(), None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD (dtype state)
            put(False)
            put(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")  # TUPLE, BUILD (array state)
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


class Evil:
    """Pickles to a call of ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---------------------------------------------------------------- IDX files


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x800 + arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx_dir(folder: Path, *, n_train=5, n_test=3, gz=False, seed=0, **overrides) -> dict:
    """Write the four MNIST IDX files; ``overrides`` replaces a file's bytes by key."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in names.items():
        data = overrides.get(key, idx_bytes(arrays[key]))
        if data is None:
            continue
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


# ---------------------------------------------------------------- MNIST pickle / wheel


def mnist_pkl_gz(n=(4, 2, 3), seed=0, splits=None) -> tuple[bytes, dict]:
    """A small deeplearning.net-style mnist.pkl.gz: ((x, y), (x, y), (x, y)), x = byte/256."""
    rng = np.random.default_rng(seed)
    parts = []
    raw = {}
    for name, count in zip(("train", "valid", "test"), n, strict=True):
        pixels = rng.integers(0, 256, (count, 784)).astype(np.uint8)
        labels = rng.integers(0, 10, count).astype(np.int64)
        raw[name] = (pixels, labels)
        parts.append((pixels.astype(np.float32) / np.float32(256), labels))
    payload = py2_dumps(tuple(parts) if splits is None else splits)
    return gzip.compress(payload), raw


def wheel_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------- CIFAR archives

CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": "test_batch",
        "meta": "batches.meta",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": "test",
        "meta": "meta",
        "classes": 100,
    },
}


def cifar_batch(name: str, rows: np.ndarray, labels: list[int], batch_label: bytes) -> dict:
    filenames = [f"img_{i:05d}.png".encode() for i in range(len(rows))]
    if name == "cifar10":
        return {
            b"batch_label": batch_label,
            b"labels": labels,
            b"data": rows,
            b"filenames": filenames,
        }
    coarse = [label // 5 for label in labels]
    return {
        b"filenames": filenames,
        b"batch_label": batch_label,
        b"fine_labels": labels,
        b"coarse_labels": coarse,
        b"data": rows,
    }


def cifar_meta(name: str) -> dict:
    if name == "cifar10":
        names = [f"class{i}".encode() for i in range(10)]
        return {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}
    return {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }


def write_cifar(
    path: Path,
    name: str = "cifar10",
    *,
    per_batch: int = 4,
    n_test: int = 3,
    seed: int = 0,
    replace: dict[str, bytes | None] | None = None,
    order: list[str] | None = None,
) -> dict:
    """Write a small archive in the official layout; return the arrays and md5.

    ``replace`` maps a member's base name to new bytes (None drops the member);
    ``order`` lists member base names in the order they are stored.
    """
    layout = CIFAR_LAYOUT[name]
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    train_rows, train_labels = [], []
    for i, batch in enumerate(layout["train"]):
        count = per_batch * (1 if name == "cifar10" else 5)
        rows = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, layout["classes"], count)]
        train_rows.append(rows)
        train_labels += labels
        label = f"training batch {i + 1} of {len(layout['train'])}".encode()
        members[batch] = py2_dumps(cifar_batch(name, rows, labels, label))
    test_rows = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, layout["classes"], n_test)]
    members[layout["test"]] = py2_dumps(cifar_batch(name, test_rows, test_labels, b"testing batch 1 of 1"))
    members[layout["meta"]] = py2_dumps(cifar_meta(name))
    members["readme.html"] = b"<html></html>"
    for key, value in (replace or {}).items():
        if value is None:
            members.pop(key)
        else:
            members[key] = value
    with tarfile.open(path, "w:gz") as tar:
        dir_info = tarfile.TarInfo(layout["folder"])
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        for member in order or list(members):
            info = tarfile.TarInfo(f"{layout['folder']}/{member}")
            info.size = len(members[member])
            tar.addfile(info, io.BytesIO(members[member]))
    return {
        "path": path,
        "md5": hashlib.md5(path.read_bytes()).hexdigest(),
        "x_train": np.concatenate(train_rows),
        "y_train": np.array(train_labels),
        "x_test": test_rows,
        "y_test": np.array(test_labels),
    }


# ---------------------------------------------------------------- misc


def listdir(folder: Path) -> list[str]:
    """Names in ``folder`` (empty if it does not exist), to check nothing was left behind."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
