"""Hostile and malformed dataset files (issue 24): one-line errors, bounded memory.

Two parts. A table of every concrete example of the issue's data part (a 4 MB gzip that
expands to 4 GiB, an ``.npz`` header claiming ``(10**12, 360)``, ``num_classes = 2**40``,
a 40-byte pickle asking for a 61 MB array, float64 features of ``1e300``, a split without
rows, corrupt caches) and their siblings (other readers, other compressions, other header
fields). Then property-based fuzzing of every reader (IDX, CIFAR pickles through the
restricted unpickler and through the archive reader, ``.npz`` features and caches): any
input ends in a result or in ``DataError``/``ConfigError`` with a one-line message, never
another exception.

Every case runs in a forked child under an address-space limit (``RLIMIT_AS``) of its
virtual size at the fork plus 1 GiB: an allocation a hostile header asks for fails there
as ``MemoryError`` instead of taking the machine, and the test fails unless the reader
turned it into our error first. torch alone maps several GiB of address space it never
touches, so the limit is relative to the measured baseline, not absolute.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import json
import lzma
import os
import pickle
import resource
import struct
import sys
import tarfile
import tempfile
import traceback
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _data_helpers as helpers
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharpminima.data import fetch, load
from sharpminima.data.cache import read_cache, write_cache
from sharpminima.data.cifar import read_cifar
from sharpminima.data.mnist import read_idx_dir, read_pkl_gz
from sharpminima.data.safe_io import MAX_ARRAY_BYTES, check_alloc, restricted_loads
from sharpminima.data.timit import read_timit_npz
from sharpminima.errors import ConfigError, DataError
from sharpminima.train import batch_indices

HEADROOM_BYTES = 1 << 30  # address space a child may map beyond its baseline
FUZZ = settings(  # SHARPMINIMA_FUZZ_EXAMPLES=2000 for a longer hunt
    max_examples=int(os.environ.get("SHARPMINIMA_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")


# ------------------------------------------------------------------ bounded children


def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def bounded(fn: Callable[..., Any], *args: Any) -> str:
    """Run ``fn(*args)`` in a forked child under RLIMIT_AS; return how it ended.

    ``"ok"``, ``"DataError: <message>"`` / ``"ConfigError: <message>"``, or ``"CRASH ..."``
    with the traceback (any other exception, or a signal).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_fd)
            limit = _vm_bytes() + HEADROOM_BYTES
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                fn(*args)
                outcome = "ok"
            except (DataError, ConfigError) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            except BaseException:  # noqa: BLE001 - reported to the parent
                outcome = "CRASH " + traceback.format_exc()
            with os.fdopen(write_fd, "wb") as out:
                out.write(outcome.encode("utf-8", "replace"))
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        outcome = pipe.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    if not outcome:
        return f"CRASH child ended with wait status {wait_status} and no report"
    return outcome


def in_child(test: Callable[..., None]) -> Callable[..., None]:
    """Run a (hypothesis) test in one bounded child; fail with its report."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        outcome = bounded(functools.partial(test, *args, **kwargs))
        if outcome != "ok":
            pytest.fail(outcome, pytrace=False)

    return wrapper


def _our_error_or_result(fn: Callable[..., Any], *args: Any) -> None:
    """The fuzz property: a result, or our error with a one-line message."""
    try:
        fn(*args)
    except (DataError, ConfigError) as exc:
        message = str(exc)
        assert message and "\n" not in message, f"not one line: {message!r}"
        assert "allow_pickle" not in message, message


def expect_error(outcome: str, pattern: str) -> None:
    import re

    assert outcome.startswith(("DataError: ", "ConfigError: ")), outcome
    assert "\n" not in outcome, outcome
    assert re.search(pattern, outcome), f"{pattern!r} not in {outcome!r}"


# ------------------------------------------------------------------ builders


def gzip_bomb(path: Path, head: bytes, total_bytes: int) -> None:
    """A gzip file of ``head`` then ``total_bytes`` zeros, written without compressing them.

    With a full flush the deflate state resets, so every 1 MiB block of zeros compresses
    to the same bytes: the block is compressed once and written again and again (4 GiB
    of zeros take 4 MB and a fraction of a second). The trailer CRC is not valid; a
    reader that got that far has already failed the test.
    """
    block = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    deflated = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    assert comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH) == deflated
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header, no name
        fh.write(first)
        for _ in range(total_bytes // len(block)):
            fh.write(deflated)
        fh.write(comp.flush())
        fh.write(struct.pack("<II", 0, (len(head) + total_bytes) & 0xFFFFFFFF))


def npy_bytes(descr: Any, shape: Any, data: bytes = b"", fortran: bool = False) -> bytes:
    """An ``.npy`` member with any header, hostile or not (format 1.0)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"
    header = header.ljust(((len(header) + 11) // 64 + 1) * 64 - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + data


def write_npz(path: Path, members: dict[str, bytes], deflate: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for key, data in members.items():
            zf.writestr(f"{key}.npy", data)
    return path


def timit_members(**changes: np.ndarray) -> dict[str, bytes]:
    arrays = {
        "x_train": np.zeros((6, 5), np.float32),
        "y_train": np.arange(6) % 3,
        "x_test": np.ones((4, 5), np.float32),
        "y_test": np.arange(4) % 3,
        "num_classes": np.array(3),
    }
    arrays.update(changes)
    out = {}
    for key, value in arrays.items():
        buf = io.BytesIO()
        np.save(buf, value)
        out[key] = buf.getvalue()
    return out


def small_raw(**changes: Any):
    from sharpminima.data.cache import RawData

    fields = {
        "name": "mnist",
        "x_train": np.zeros((3, 1, 28, 28), np.uint8),
        "y_train": np.array([0, 1, 2]),
        "x_test": np.zeros((2, 1, 28, 28), np.uint8),
        "y_test": np.array([3, 4]),
        "num_classes": 10,
        "source": "test",
        "pixel_scale": 255.0,
    }
    fields.update(changes)
    return RawData(**fields)


# ------------------------------------------------------------------ the issue's examples


def _idx_folder(tmp_path: Path, **overrides: bytes) -> Path:
    folder = tmp_path / "idx"
    helpers.write_idx_dir(folder, **overrides)
    return folder


def case_gzip_bomb_behind_a_valid_header(tmp: Path) -> Callable[[], Any]:
    folder = _idx_folder(tmp, x_train=None)
    head = struct.pack(">IIII", 0x803, 60000, 28, 28)
    gzip_bomb(folder / "train-images-idx3-ubyte.gz", head, 4 << 30)
    assert (folder / "train-images-idx3-ubyte.gz").stat().st_size < 5 << 20
    return lambda: read_idx_dir(folder)


def case_gzip_bomb_header_claims_it_all(tmp: Path) -> Callable[[], Any]:
    folder = _idx_folder(tmp, x_train=None)
    head = struct.pack(">IIII", 0x803, (4 << 30) // 784, 28, 28)
    gzip_bomb(folder / "train-images-idx3-ubyte.gz", head, 4 << 20)
    return lambda: read_idx_dir(folder)


def case_xz_idx_header_beyond_its_ratio(tmp: Path) -> Callable[[], Any]:
    folder = _idx_folder(tmp, y_train=None)
    head = struct.pack(">II", 0x801, 1 << 30)
    (folder / "train-labels-idx1-ubyte").write_bytes(lzma.compress(head + bytes(1000)))
    return lambda: read_idx_dir(folder)


def case_raw_idx_header_beyond_the_file(tmp: Path) -> Callable[[], Any]:
    folder = _idx_folder(tmp, x_test=struct.pack(">IIII", 0x803, 2**32 - 1, 28, 28) + bytes(784))
    return lambda: read_idx_dir(folder)


def case_npz_header_claims_1e12_rows(tmp: Path) -> Callable[[], Any]:
    members = timit_members()
    members["x_train"] = npy_bytes("<f8", (10**12, 360), bytes(64))
    path = write_npz(tmp / "timit.npz", members)
    return lambda: read_timit_npz(path)


def case_npz_deflated_member_declares_too_much(tmp: Path) -> Callable[[], Any]:
    path = write_npz(tmp / "timit.npz", timit_members(), deflate=True)
    data = bytearray(path.read_bytes())
    # Patch the x_train entry's uncompressed size (local header and central directory).
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.find(sig)
        offset = 22 if sig == b"PK\x03\x04" else 24
        data[at + offset : at + offset + 4] = struct.pack("<I", 3 << 30)
    path.write_bytes(bytes(data))
    return lambda: read_timit_npz(path)


def case_num_classes_2_40(tmp: Path) -> Callable[[], Any]:
    path = write_npz(tmp / "timit.npz", timit_members(num_classes=np.array(2**40)))
    return lambda: read_timit_npz(path)


def case_40_byte_pickle(tmp: Path) -> Callable[[], Any]:
    payload = b"\x80\x02cnumpy\nndarray\nJ\x00\x12z\x00\x85R."  # ndarray((8_000_000,)): 61 MiB
    assert len(payload) <= 40
    return lambda: restricted_loads(payload, path="tiny.pkl")


def case_40_byte_pickle_as_mnist_pkl_gz(tmp: Path) -> Callable[[], Any]:
    payload = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x12z\x00\x85U\x01b\x87R."
    return lambda: read_pkl_gz(gzip.compress(payload), where="mnist.pkl.gz", verify=False)


EMPTY_ARRAY = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"


def dtype_ops(code: bytes) -> bytes:
    """Opcodes building ``numpy.dtype(code)`` with its plain state, as numpy pickles it."""
    state = b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    return b"cnumpy\ndtype\nU" + bytes([len(code)]) + code + b"K\x00K\x01\x87R" + state


def case_pickle_state_with_a_huge_shape(tmp: Path) -> Callable[[], Any]:
    # _reconstruct(ndarray, (0,), 'b'), then BUILD with (1, (10**9,), float64, False, b"")
    state = b"(K\x01J\x00\xca\x9a;\x85" + dtype_ops(b"f8") + b"\x89C\x00t"
    hostile = EMPTY_ARRAY + state + b"b."
    return lambda: restricted_loads(hostile, path="state.pkl")


def case_pickle_object_array_state(tmp: Path) -> Callable[[], Any]:
    # numpy's setstate trusts an object array's list and crashes on a short one.
    state = b"(K\x01J\x00\xe1\xf5\x05\x85" + dtype_ops(b"O8") + b"\x89]t"
    hostile = EMPTY_ARRAY + state + b"b."
    return lambda: restricted_loads(hostile, path="obj.pkl")


def case_pickle_dtype_state_item_size_minus_one(tmp: Path) -> Callable[[], Any]:
    # numpy accepts a text dtype state with item size -1; an array of it would be nonsense.
    state = b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    hostile = b"\x80\x02cnumpy\ndtype\nU\x02S3K\x00K\x01\x87R" + state + b"."
    return lambda: restricted_loads(hostile, path="dtype.pkl")


def case_pickle_announces_1tb_string(tmp: Path) -> Callable[[], Any]:
    payload = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc."  # BINBYTES8
    return lambda: restricted_loads(payload, path="huge.pkl")


def case_pickle_tuple_a_million_deep(tmp: Path) -> Callable[[], Any]:
    # Hashing it as a dict key would recurse in C until the interpreter crashes.
    payload = b"\x80\x02}K\x00" + b"\x85" * 1_000_000 + b"K\x01s."
    return lambda: restricted_loads(payload, path="deep.pkl")


def case_mnist_pkl_gz_string_bomb(tmp: Path) -> Callable[[], Any]:
    path = tmp / "mnist.pkl.gz"
    gzip_bomb(path, b"\x80\x04\x8e" + struct.pack("<Q", 1 << 30), 1 << 30)  # BINBYTES8 of 1 GiB
    return lambda: read_pkl_gz(path.read_bytes(), where="mnist.pkl.gz", verify=False)


def case_cifar_member_40_byte_pickle(tmp: Path) -> Callable[[], Any]:
    path = tmp / "c.tar.gz"
    helpers.write_cifar(path, replace={"test_batch": b"\x80\x02cnumpy\nndarray\nJ\x00\x12z\x00\x85R."})
    return lambda: read_cifar(path, verify=False)


def case_cifar_tar_gz_bomb(tmp: Path) -> Callable[[], Any]:
    path = tmp / "cifar-10-python.tar.gz"
    member = tarfile.TarInfo("cifar-10-batches-py/readme.html")
    member.size = 1 << 30  # a member of 1 GiB of zeros the reader must skip
    gzip_bomb(path, member.tobuf(), 1 << 30)
    return lambda: read_cifar(path, verify=False)


def case_cifar_nested_labels(tmp: Path) -> Callable[[], Any]:
    # A list holding itself many times over: np.asarray would walk billions of entries.
    inner = b"]q\x00(h\x00h\x00h\x00h\x00h\x00h\x00h\x00h\x00e"  # [x]*8 where x is itself
    data = b"cnumpy\nndarray\n((K\x00M\x00\x0ctU\x02u1tR"  # ndarray((0, 3072), 'u1')
    body = b"\x80\x02}(U\x04data" + data + b"U\x06labels" + inner + b"u."
    path = tmp / "c.tar.gz"
    helpers.write_cifar(path, replace={"data_batch_1": body})
    return lambda: read_cifar(path, verify=False)


def case_float64_1e300(tmp: Path) -> Callable[[], Any]:
    x = np.zeros((6, 5))
    x[2, 3] = 1e300
    path = write_npz(tmp / "timit.npz", timit_members(x_train=x))
    return lambda: read_timit_npz(path)


def case_zero_test_rows_npz(tmp: Path) -> Callable[[], Any]:
    members = timit_members(x_test=np.zeros((0, 5), np.float32), y_test=np.zeros(0, np.int64))
    path = write_npz(tmp / "timit.npz", members)
    return lambda: read_timit_npz(path)


def case_zero_test_rows_idx(tmp: Path) -> Callable[[], Any]:
    folder = tmp / "idx"
    helpers.write_idx_dir(folder, n_test=0)
    return lambda: fetch("mnist", root=tmp / "cache", source=folder)


def case_truncated_cache(tmp: Path) -> Callable[[], Any]:
    root = tmp / "cache"
    path = write_cache(small_raw(), root / "mnist.npz")
    path.write_bytes(path.read_bytes()[:-100])
    return lambda: load("mnist", root=root)


def case_cache_with_object_arrays(tmp: Path) -> Callable[[], Any]:
    root = tmp / "cache"
    root.mkdir()
    path = root / "mnist.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key in ("x_train", "y_train", "x_test", "y_test", "meta_json"):
            buf = io.BytesIO()
            np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
            zf.writestr(f"{key}.npy", buf.getvalue())
    return lambda: load("mnist", root=root)


def case_cache_with_zero_train_rows(tmp: Path) -> Callable[[], Any]:
    root = tmp / "cache"
    raw = small_raw(x_train=np.zeros((0, 1, 28, 28), np.uint8), y_train=np.zeros(0, np.int64))
    write_cache(raw, root / "mnist.npz")
    return lambda: load("mnist", root=root)


def case_cache_meta_nested_deep(tmp: Path) -> Callable[[], Any]:
    root = tmp / "cache"
    path = root / "mnist.npz"
    write_cache(small_raw(), path)
    members = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            members[info.filename[:-4]] = zf.read(info)
    buf = io.BytesIO()
    np.save(buf, np.array("[" * 200_000 + "]" * 200_000))
    members["meta_json"] = buf.getvalue()
    write_npz(path, members)
    return lambda: load("mnist", root=root)


def case_dev_zero_as_features(tmp: Path) -> Callable[[], Any]:
    link = tmp / "timit.npz"
    link.symlink_to("/dev/zero")
    return lambda: read_timit_npz(link)


def case_fifo_as_idx(tmp: Path) -> Callable[[], Any]:
    folder = _idx_folder(tmp)
    os.remove(folder / "train-labels-idx1-ubyte")
    os.mkfifo(folder / "train-labels-idx1-ubyte.gz")  # _find_idx skips it: not a file
    return lambda: read_idx_dir(folder)


SHAPE = r"header claims an array of shape"
CASES = [
    (case_gzip_bomb_behind_a_valid_header, r"holds more than the 47040000 data bytes its header announces"),
    (case_gzip_bomb_header_claims_it_all, SHAPE + r" \(5478274, 28, 28\) .* can hold at most"),
    (case_xz_idx_header_beyond_its_ratio, SHAPE + r" \(1073741824,\) .* can hold at most 64\.0 MiB"),
    (case_raw_idx_header_beyond_the_file, r"t10k-images-idx3-ubyte: " + SHAPE + r" \(4294967295, 28, 28\)"),
    (case_npz_header_claims_1e12_rows, r"x_train\.npy: " + SHAPE + r" \(1000000000000, 360\) .* GiB limit"),
    (case_npz_deflated_member_declares_too_much, r"x_train\.npy: its zip entry claims 3\.0 GiB from"),
    (case_num_classes_2_40, r"num_classes must be one integer >= 2 and at most 1,000,000, got 1099511627776"),
    (case_40_byte_pickle, r"tiny\.pkl \(numpy\.ndarray\(shape\)\): " + SHAPE + r" \(8000000,\)"),
    (case_40_byte_pickle_as_mnist_pkl_gz, r"mnist\.pkl\.gz \(_reconstruct\(shape\)\): " + SHAPE),
    (case_pickle_state_with_a_huge_shape, r"state\.pkl \(array state\): " + SHAPE + r" \(1000000000,\)"),
    (case_pickle_object_array_state, r"obj\.pkl: refused numpy dtype object"),
    (case_pickle_dtype_state_item_size_minus_one, r"dtype\.pkl: refused numpy dtype S of item size -1"),
    (case_pickle_announces_1tb_string, r"huge\.pkl: corrupt or truncated pickle"),
    (case_pickle_tuple_a_million_deep, r"deep\.pkl: refused tuples nested more than 100 deep"),
    (case_mnist_pkl_gz_string_bomb, r"mnist\.pkl\.gz: corrupt .*announces 1073741824 bytes"),
    (case_cifar_member_40_byte_pickle, r"test_batch \(numpy\.ndarray\(shape\)\): " + SHAPE),
    (case_cifar_tar_gz_bomb, r"tar\.gz: holds more than [\d.]+ MiB \(a 1\.0 MiB gzip file may expand"),
    (case_cifar_nested_labels, r"data_batch_1: b'labels' is object \(\), expected 0 integer labels"),
    (case_float64_1e300, r"x_train has values up to 1e\+300, beyond float32's range .* rescale the features"),
    (case_zero_test_rows_npz, r"x_test has no rows; each split needs at least one sample"),
    (case_zero_test_rows_idx, r"the test split has no rows"),
    (case_truncated_cache, r"mnist\.npz: unreadable dataset cache \(.*\); delete it \(.*\) and fetch again"),
    (case_cache_with_object_arrays, r"cache \(not an \.npz of plain arrays .*Python objects.*delete it"),
    (case_cache_with_zero_train_rows, r"unreadable dataset cache \(the train split has no rows"),
    (case_cache_meta_nested_deep, r"unreadable dataset cache \(meta_json: RecursionError"),
    (case_dev_zero_as_features, r"timit\.npz: not a regular file"),
    (case_fifo_as_idx, r"missing train-labels-idx1-ubyte"),
]


@pytest.mark.parametrize(("build", "pattern"), CASES, ids=[c[0].__name__[5:] for c in CASES])
def test_issue_example_is_one_line_error_with_bounded_memory(tmp_path, build, pattern):
    run = build(tmp_path)
    expect_error(bounded(run), pattern)


def test_bounded_child_reports_foreign_errors_and_enforces_its_limit():
    assert bounded(lambda: None) == "ok"
    assert bounded(lambda: (_ for _ in ()).throw(DataError("bad file"))) == "DataError: bad file"
    assert bounded(lambda: {}["k"]).startswith("CRASH Traceback")
    outcome = bounded(lambda: np.ones(2 * HEADROOM_BYTES, np.uint8))
    assert outcome.startswith("CRASH") and "MemoryError" in outcome


def test_corrupt_cache_message_never_relays_numpys_pickle_advice(tmp_path):
    run = case_cache_with_object_arrays(tmp_path)
    outcome = bounded(run)
    assert "allow_pickle" not in outcome and "unsafely" not in outcome


def test_check_alloc_counts_with_python_integers():
    with pytest.raises(DataError, match=r"w: " + SHAPE + r" \(4294967296, 4294967296, 4294967296\)"):
        check_alloc((2**32,) * 3, np.float64, available_bytes=10**30, what="w")
    with pytest.raises(DataError, match=r"w: header gives negative dimensions \(-1,\)"):
        check_alloc((-1,), np.uint8, available_bytes=10, what="w")
    with pytest.raises(DataError, match=r"w: header gives shape 'x' and dtype"):
        check_alloc("x", np.uint8, available_bytes=10, what="w")
    with pytest.raises(DataError, match=r"w: header claims an array of shape \(0, 9000000000\)"):
        check_alloc((0, 9 * 10**9), np.float32, available_bytes=10, what="w")  # no bytes, absurd rows
    assert check_alloc((3, 4), np.float32, available_bytes=48, what="w") == 48
    most = MAX_ARRAY_BYTES
    assert check_alloc(most, np.uint8, available_bytes=most, what="w") == most


@pytest.mark.parametrize(("num", "batch_size"), [(11, 5), (601, 50), (3, 2), (5, 1), (10, 5), (2, 5)])
def test_no_final_batch_of_one_for_batchnorm(num, batch_size):
    batches = batch_indices(num, batch_size, seed=0, epoch=1, device=torch.device("cpu"))
    sizes = [len(b) for b in batches]
    assert sum(sizes) == num and torch.equal(torch.cat(batches).sort().values, torch.arange(num))
    assert batch_size == 1 or num == 1 or min(sizes) > 1
    assert sizes[:-1] == [batch_size] * (len(sizes) - 1)


def test_batchnorm_net_trains_through_a_remainder_of_one():
    bn = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    x = torch.randn(11, 3)
    for idx in batch_indices(11, 5, seed=0, epoch=1, device=torch.device("cpu")):
        bn(x[idx])  # "Expected more than 1 value per channel" if a batch had one sample


def test_valid_files_still_load(tmp_path):
    """The limits refuse none of the real layouts (gzip IDX, deflated caches, pickles)."""
    folder = tmp_path / "idx"
    arrays = helpers.write_idx_dir(folder, gz=True)
    raw = read_idx_dir(folder)
    np.testing.assert_array_equal(raw.x_train[:, 0], arrays["x_train"])
    path = fetch("mnist", root=tmp_path / "cache", source=folder)
    np.testing.assert_array_equal(read_cache(path).y_test, arrays["y_test"])
    for compress in (bz2.compress, lzma.compress):  # recognised by content, not by name
        (folder / "t10k-labels-idx1-ubyte.gz").unlink(missing_ok=True)
        (folder / "t10k-labels-idx1-ubyte").write_bytes(compress(helpers.idx_bytes(arrays["y_test"])))
        np.testing.assert_array_equal(read_idx_dir(folder).y_test, arrays["y_test"])
    x64 = np.full((6, 5), 3e38)  # float64, finite in float32 too
    loaded = read_timit_npz(write_npz(tmp_path / "t.npz", timit_members(x_train=x64)))
    assert np.isfinite(loaded.x_train).all() and loaded.x_train.dtype == np.float32
    data, raw_pkl = helpers.mnist_pkl_gz()
    assert read_pkl_gz(data, where="m", verify=False).x_test.shape == (3, 1, 28, 28)
    cifar = helpers.write_cifar(tmp_path / "c.tar.gz")
    xz = tmp_path / "c.tar.xz"  # another compression, recognised by content
    xz.write_bytes(lzma.compress(gzip.decompress(cifar["path"].read_bytes())))
    np.testing.assert_array_equal(read_cifar(xz, verify=False).x_test.reshape(-1, 3072), cifar["x_test"])


# ------------------------------------------------------------------ fuzzing


def _mutate(draw: Any, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "append", "insert"]))
        if op == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif op == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "append":
            data += draw(st.binary(max_size=64))
        elif op == "insert" and data:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _compress(draw: Any, data: bytes) -> bytes:
    how = draw(st.sampled_from(["raw", "raw", "gzip", "bzip2", "xz"]))
    if how == "gzip":
        data = gzip.compress(data, compresslevel=1)
    elif how == "bzip2":
        data = bz2.compress(data, compresslevel=1)
    elif how == "xz":
        data = lzma.compress(data, preset=0)
    if how != "raw" and draw(st.booleans()):
        data = _mutate(draw, data)
    return data


HUGE_INTS = st.one_of(st.integers(0, 8), st.sampled_from([2**31 - 1, 2**32 - 1, 10**9, 10**12]))


@st.composite
def idx_files(draw: Any) -> tuple[str, bytes]:
    key = draw(st.sampled_from(["x_train", "y_train", "x_test", "y_test"]))
    images = key.startswith("x")
    kind = draw(st.sampled_from(["random", "mutated", "header"]))
    if kind == "random":
        data = draw(st.binary(max_size=2000))
    elif kind == "mutated":
        shape = (2, 28, 28) if images else (2,)
        data = _mutate(draw, helpers.idx_bytes(np.full(shape, 7, np.uint8)))
    else:
        magic = draw(st.sampled_from([0x803, 0x801, 0x802]) | st.integers(0, 2**32 - 1))
        ndim = 3 if images else 1
        dim = st.sampled_from([0, 1, 2, 28, 2**31 - 1, 2**32 - 1]) | st.integers(0, 2**32 - 1)
        dims = draw(st.lists(dim, min_size=ndim, max_size=ndim))
        data = struct.pack(f">I{ndim}I", magic, *dims) + draw(st.binary(max_size=3000))
    return key, _compress(draw, data)


@FUZZ
@given(idx_files())
def _idx_property(case: tuple[str, bytes]) -> None:
    key, data = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        helpers.write_idx_dir(folder, **{key: None})
        stem = {"x_train": "train-images", "y_train": "train-labels", "x_test": "t10k-images",
                "y_test": "t10k-labels"}[key]  # fmt: skip
        suffix = "idx3-ubyte" if key.startswith("x") else "idx1-ubyte"
        (folder / f"{stem}-{suffix}").write_bytes(data)
        _our_error_or_result(read_idx_dir, folder)


@in_child
def test_fuzz_idx_reader() -> None:
    _idx_property()


PICKLE_PIECES = [
    b"cnumpy\nndarray\n", b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\ndtype\n",
    b"cnumpy._core.multiarray\nscalar\n", b"cnumpy._core.numeric\n_frombuffer\n",
    b"c__builtin__\nset\n", b"c__builtin__\nbytearray\n", b"c_codecs\nencode\n",
    b"(", b")", b"t", b"\x85", b"\x86", b"\x87", b"R", b"b", b"]", b"}", b"e", b"a", b"u", b"s",
    b"N", b"\x88", b"0", b"2", b"1", b"h\x00", b"q\x00", b"\x81", b"\x92",
    b"U\x02f8", b"U\x02u1", b"U\x02O8", b"U\x01b", b"K\x00", b"K\x05", b"J\xff\xff\xff\x7f",
    b"\x8a\x08" + b"\xff" * 8, b"\x8e" + struct.pack("<Q", 1 << 40), b"\x96" + struct.pack("<Q", 1 << 33),
    b"T" + struct.pack("<I", 2**31), b"\x95" + struct.pack("<Q", 1 << 40), b"X\x03\x00\x00\x00abc",
    b"U\x02S3", b"U\x02U2", b"U\x01|", b"J\xff\xff\xff\xff", b"K\x03", b"C\x08" + bytes(8),
    b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t",  # a dtype state
]  # fmt: skip


@st.composite
def pickles(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated_py2", "mutated_py3", "soup"]))
    if kind == "random":
        return draw(st.binary(max_size=500))
    if kind == "mutated_py2":
        batch = helpers.cifar_batch("cifar10", np.full((2, 3072), 9, np.uint8), [1, 2], b"b")
        return _mutate(draw, helpers.py2_dumps(batch))
    if kind == "mutated_py3":
        obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, b"x"], "c": np.float64(2)}
        return _mutate(draw, pickle.dumps(obj, protocol=draw(st.sampled_from([2, 4, 5]))))
    pieces = draw(st.lists(st.sampled_from(PICKLE_PIECES), max_size=40))
    return b"\x80\x02" + b"".join(pieces) + b"."


@FUZZ
@given(pickles(), st.sampled_from(["bytes", "latin1", "ASCII"]))
def _pickle_property(data: bytes, encoding: str) -> None:
    _our_error_or_result(lambda: restricted_loads(data, path="p.pkl", encoding=encoding))


@in_child
def test_fuzz_restricted_unpickler() -> None:
    _pickle_property()


@FUZZ
@given(
    st.one_of(pickles().map(lambda p: ("member", p)), st.binary(max_size=64).map(lambda b: ("archive", b))),
    st.integers(0, 10**6),
)
def _cifar_property(case: tuple[str, bytes], seed: int) -> None:
    where, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.tar.gz"
        if where == "member":
            helpers.write_cifar(path, replace={"test_batch": data}, per_batch=1, n_test=1)
        else:  # a valid archive with a few bytes changed
            helpers.write_cifar(path, per_batch=1, n_test=1)
            raw = bytearray(path.read_bytes())
            rng = np.random.default_rng(seed)
            for i, at in enumerate(rng.integers(0, len(raw), max(1, len(data) // 8))):
                raw[at] = data[i % len(data)] if data else 0
            path.write_bytes(bytes(raw))
        _our_error_or_result(lambda: read_cifar(path, verify=False))


@in_child
def test_fuzz_cifar_archives() -> None:
    _cifar_property()


DESCRS = ["<f8", "<f4", ">f8", "<f2", "<i8", "|u1", "|b1", "<c16", "|O", "|V8", "<U3", "|S0",
          "<U1000000000", "<M8[s]", [("a", "<f8")], "<f8 garbage"]  # fmt: skip


@st.composite
def npy_members(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["valid", "hostile", "mutated"]))
    if kind == "hostile":
        shape = tuple(draw(st.lists(HUGE_INTS, max_size=3)))
        descr = draw(st.sampled_from(DESCRS))
        return npy_bytes(descr, shape, draw(st.binary(max_size=200)), draw(st.booleans()))
    buf = io.BytesIO()
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.uint8]))
    np.save(buf, np.ones(tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2))), dtype))
    return buf.getvalue() if kind == "valid" else _mutate(draw, buf.getvalue())


@st.composite
def npz_files(draw: Any) -> tuple[str, bytes]:
    target = draw(st.sampled_from(["timit", "cache"]))
    kind = draw(st.sampled_from(["random", "mutated", "members"]))
    if kind == "random":
        return target, draw(st.binary(max_size=1000))
    buf = io.BytesIO()
    methods = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
    method = draw(st.sampled_from(methods))
    keys = ["x_train", "y_train", "x_test", "y_test", "num_classes" if target == "timit" else "meta_json"]
    with zipfile.ZipFile(buf, "w", method) as zf:
        for key in keys:
            if draw(st.integers(0, 9)) == 0:
                continue  # a missing member now and then
            if key == "meta_json":
                text = draw(st.sampled_from([json.dumps(small_raw().meta()), "[" * 5000, "{}", "null"]))
                member = io.BytesIO()
                np.save(member, np.array(text))
                zf.writestr(f"{key}.npy", member.getvalue())
            else:
                zf.writestr(f"{key}.npy", draw(npy_members()))
    data = buf.getvalue()
    return target, _mutate(draw, data) if kind == "mutated" else data


@FUZZ
@given(npz_files())
def _npz_property(case: tuple[str, bytes]) -> None:
    target, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("timit.npz" if target == "timit" else "mnist.npz")
        path.write_bytes(data)
        if target == "timit":
            _our_error_or_result(lambda: read_timit_npz(path).to_dataset())
        else:
            _our_error_or_result(lambda: read_cache(path).to_dataset())


@in_child
def test_fuzz_npz_features_and_caches() -> None:
    _npz_property()


# ------------------------------------------------------------------ data factories


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("x_train = torch.full((4, 3), 1e300, dtype=torch.float64)", r"x_train has NaN or infinite"),
        ("y_train = torch.tensor([0, 1, 2, 2**40])", r"targets reach 1099511627776, more than the 1,000,000"),
        ("x_test = torch.zeros(0, 3)", r"the test split has 0 inputs"),
    ],
)
def test_data_factory_values_checked_in_float32_and_bounded(tmp_path, monkeypatch, body, pattern):
    module = tmp_path / "hostile_data_factory.py"
    module.write_text(
        "import torch\n\ndef make():\n"
        "    x_train, y_train = torch.zeros(4, 3), torch.tensor([0, 1, 2, 1])\n"
        "    x_test, y_test = torch.zeros(2, 3), torch.tensor([0, 1])\n"
        f"    {body}\n"
        "    return x_train, y_train, x_test, y_test\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hostile_data_factory", raising=False)
    with pytest.raises(DataError, match=pattern):
        load("hostile_data_factory:make")


def test_data_factory_token_targets_may_use_ignore_index(tmp_path, monkeypatch):
    (tmp_path / "token_data_factory.py").write_text(
        "import torch\n\ndef make():\n"
        "    y = torch.tensor([[1, 2, -100], [3, 4, -100]])\n"
        "    return torch.zeros(2, 3, dtype=torch.long), y, torch.zeros(2, 3, dtype=torch.long), y\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load("token_data_factory:make").num_classes == 5
