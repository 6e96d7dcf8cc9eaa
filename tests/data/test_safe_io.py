import builtins
import hashlib
import os
import pickle
import subprocess
import warnings

import _data_helpers as helpers
import numpy as np
import pytest

from sharpminima.data.safe_io import (
    atomic_target,
    atomic_write_bytes,
    md5_file,
    restricted_load,
    restricted_loads,
    save_npz,
    sha256_file,
)
from sharpminima.errors import DataError

# ------------------------------------------------------------------ refusal


@pytest.mark.parametrize(
    ("func", "arg_template", "refused"),
    [
        (os.system, "touch {marker}", r"global (posix|nt)\.system"),
        (builtins.eval, "open(r'{marker}', 'w')", r"global (__)?builtin(s|__)\.eval"),
        (subprocess.call, "touch {marker}", r"global (subprocess|commands)\.call"),
        (builtins.exec, "open(r'{marker}', 'w')", r"global (__)?builtin(s|__)\.exec"),
    ],
)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, func, arg_template, refused, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(helpers.Evil(func, arg_template.format(marker=marker)), protocol)
    with pytest.raises(DataError, match=rf"evil\.pkl: refused to unpickle {refused}"):
        restricted_loads(payload, path="evil.pkl")
    assert not marker.exists()


def test_malicious_global_nested_in_data_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(
        {b"data": np.zeros(3), b"labels": [helpers.Evil(os.system, f"touch {marker}")]},
        protocol=2,
    )
    with pytest.raises(DataError, match=r"refused to unpickle global"):
        restricted_loads(payload, path="batch", encoding="bytes")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"cos\nsystem\n(S'echo pwned'\ntR.", r"os\.system"),
        (b"c__builtin__\neval\n(S'1+1'\ntR.", r"__builtin__\.eval"),
        (b"ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nNNtR.", r"copy_reg\._reconstructor"),
        (b"cnumpy\nload\n(S'x'\ntR.", r"numpy\.load"),
    ],
)
def test_handwritten_python2_globals_are_refused(payload, refused):
    with pytest.raises(DataError, match=rf"f\.pkl: refused to unpickle global {refused}; "):
        restricted_loads(payload, path="f.pkl", encoding="bytes")


def test_codecs_encode_only_admits_latin1():
    payload = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(DataError, match=r"f\.pkl: refused _codecs\.encode with codec 'zlib'; a dataset file"):
        restricted_loads(payload, path="f.pkl")


def test_refusal_message_is_one_line():
    with pytest.raises(DataError) as info:
        restricted_loads(b"cos\nsystem\n(S'x'\ntR.", path="f.pkl")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_roundtrip_arrays_and_containers(protocol):
    obj = {
        b"data": np.arange(24, dtype=np.uint8).reshape(2, 12),
        b"f32": np.linspace(0, 1, 7, dtype=np.float32),
        b"i64": np.array([-3, 2**40], dtype=np.int64),
        b"bool": np.array([True, False]),
        b"complex": np.array([1 + 2j]),
        b"fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        b"empty": np.zeros((0, 3), dtype=np.float64),
        "labels": [1, 2, 3],
        "nested": ({"a": (1.5, None, True)}, [b"\x00\xff", "text"]),
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "bytearray": bytearray(b"ab"),
        "cplx": 3 - 1j,
        "scalars": [np.float64(1.5), np.int64(7), np.float32(2.5)],
    }
    out = restricted_loads(pickle.dumps(obj, protocol=protocol), path="ok.pkl")
    assert out.keys() == obj.keys()
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(out[key], value)
            assert out[key].dtype == value.dtype
        else:
            assert out[key] == value
    assert out[b"fortran"].flags.f_contiguous


def test_python2_pickle_with_bytes_keys():
    rows = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    obj = {b"data": rows, b"labels": [3, 9], b"batch_label": b"training batch 1 of 5"}
    out = restricted_loads(helpers.py2_dumps(obj), path="b", encoding="bytes")
    assert set(out) == set(obj)
    np.testing.assert_array_equal(out[b"data"], rows)
    assert out[b"labels"] == [3, 9]
    assert out[b"batch_label"] == b"training batch 1 of 5"


def test_python2_pickle_latin1_float_arrays():
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    out = restricted_loads(helpers.py2_dumps((x, np.arange(3))), path="m", encoding="latin1")
    np.testing.assert_array_equal(out[0], x)
    assert out[0].dtype == np.float32


def test_old_numpy_core_names_map_without_deprecation_warning():
    payload = pickle.dumps(np.arange(5), protocol=2)
    assert b"numpy._core.multiarray" in payload
    old = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = restricted_loads(old, path="old.pkl")
    np.testing.assert_array_equal(out, np.arange(5))


def test_restricted_load_reads_a_stream(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps([1, np.ones(2)], protocol=2))
    with open(path, "rb") as fh:
        out = restricted_load(fh, path=path)
    assert out[0] == 1


@pytest.mark.parametrize("cut", [1, 10, -1])
def test_truncated_pickle_is_a_data_error(cut):
    payload = pickle.dumps({b"data": np.arange(100)}, protocol=2)
    with pytest.raises(DataError, match=r"t\.pkl: corrupt or truncated pickle \("):
        restricted_loads(payload[:cut], path="t.pkl")


# ------------------------------------------------------------------ hashes


def test_hashes(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert md5_file(path) == hashlib.md5(data).hexdigest()


def test_hash_of_missing_file_or_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope\.bin: file not found"):
        sha256_file(tmp_path / "nope.bin")
    with pytest.raises(DataError, match=r"is a folder, expected a file"):
        md5_file(tmp_path)


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["f.bin"]
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, exc):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_target(path) as fh:
            fh.write(b"partial new content")
            raise exc
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_into_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot write to .*file.*set SHARPMINIMA_DATA"):
        atomic_write_bytes(blocker / "f.bin", b"x")


@pytest.mark.parametrize("compress", [True, False])
def test_save_npz_keeps_name_and_loads_without_pickle(tmp_path, compress):
    path = tmp_path / "cache.data"  # no .npz suffix: numpy must not append one
    save_npz(path, compress=compress, a=np.arange(5), s=np.array("text"))
    assert os.listdir(tmp_path) == ["cache.data"]
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["a"], np.arange(5))
        assert str(npz["s"]) == "text"


def test_save_npz_refuses_object_arrays_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="allow_pickle"):
        save_npz(tmp_path / "c.npz", a=np.array([{"x": 1}], dtype=object))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x7f\x85R.", r"refused bytes\(\.\.\.\) with"),
        (b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x7f\x85R.", r"refused bytearray\(n\)"),
    ],
)
def test_allocation_bombs_through_bytes_are_refused(payload, refused):
    with pytest.raises(DataError, match=rf"b\.pkl: {refused}"):
        restricted_loads(payload, path="b.pkl")


def test_empty_bytes_and_bytearrays_roundtrip():
    obj = [b"", bytearray(), bytearray(b"xy"), np.zeros((0, 3))]
    out = restricted_loads(pickle.dumps(obj, protocol=2), path="e.pkl")
    assert out[:3] == obj[:3]
    assert out[3].shape == (0, 3)
