import zipfile

import numpy as np
import pytest
import torch

from sharpminima.data import fetch, info, load
from sharpminima.data.timit import DEFAULT_NUM_CLASSES, read_timit_npz
from sharpminima.errors import DataError


def _arrays(n=6, m=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.standard_normal((n, d)).astype(np.float32),
        "y_train": rng.integers(0, DEFAULT_NUM_CLASSES, n),
        "x_test": rng.standard_normal((m, d)).astype(np.float32),
        "y_test": rng.integers(0, DEFAULT_NUM_CLASSES, m).astype(np.int32),
    }


def _write(tmp_path, **changes):
    arrays = _arrays()
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = tmp_path / "timit.npz"
    np.savez(path, **arrays)
    return path


def test_good_npz_loads(tmp_path):
    path = _write(tmp_path)
    ds = load("timit", source=path, root=tmp_path / "cache")
    arrays = _arrays()
    assert ds.num_classes == 1973 and ds.input_shape == (5,)
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    np.testing.assert_array_equal(ds.x_train.numpy(), arrays["x_train"])
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["y_test"])
    assert ds.meta["pixel_scale"] is None and "npz_sha256" in ds.meta["checksums"]
    assert not (tmp_path / "cache").exists()  # loading from a source does not copy it


def test_num_classes_key_and_float64_features(tmp_path):
    path = _write(
        tmp_path,
        num_classes=np.array(7),
        y_train=np.array([0, 6, 1, 2, 3, 4]),
        y_test=np.array([0, 0, 1, 6], dtype=np.uint16),
        x_train=np.ones((6, 5)),
    )
    raw = read_timit_npz(path)
    assert raw.num_classes == 7 and raw.x_train.dtype == np.float32


def test_fetch_caches_and_load_uses_the_cache(tmp_path):
    path = _write(tmp_path)
    root = tmp_path / "cache"
    cached = fetch("timit", root=root, source=path)
    path.unlink()
    ds = load("timit", root=root, train_limit=2)
    assert ds.num_train == 2 and ds.meta["cache"] == str(cached)
    assert info(root)[0]["num_classes"] == 1973


def test_no_source_and_no_cache(tmp_path):
    with pytest.raises(DataError, match=r"^TIMIT is licensed and cannot be downloaded; pass your"):
        load("timit", root=tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"x_test": None}, r"missing x_test; expected an \.npz with x_train float \[N, d\]"),
        ({"y_train": None, "y_test": None}, r"missing y_train, y_test; expected"),
        (
            {"x_train": np.zeros((6, 5, 1), np.float32)},
            r"x_train has shape \(6, 5, 1\) and y_train",
        ),
        (
            {"y_test": np.zeros((4, 1), np.int64)},
            r"x_test has shape \(4, 5\) and y_test \(4, 1\); expected",
        ),
        ({"x_train": np.zeros((6, 5), np.int64)}, r"x_train is int64, expected floating point"),
        ({"y_test": np.zeros(4, np.float32)}, r"y_test is float32, expected integer labels"),
        ({"y_train": np.zeros(5, np.int64)}, r"x_train has 6 rows but y_train 5 labels"),
        ({"x_test": np.zeros((4, 6), np.float32)}, r"x_train has 5 features but x_test 6"),
        (
            {"y_train": np.array([0, 1, 2, 3, 4, 1973])},
            r"y_train spans \[0, 1973\], expected \[0, 1972\]",
        ),
        ({"y_test": np.array([-1, 0, 0, 0])}, r"y_test spans \[-1, 0\], expected \[0, 1972\]"),
        (
            {
                "num_classes": np.array(3),
                "y_train": np.zeros(6, np.int64),
                "y_test": np.array([0, 1, 2, 3]),
            },
            r"y_test spans \[0, 3\], expected \[0, 2\]",
        ),
        ({"num_classes": np.array(1)}, r"num_classes must be one integer >= 2 and at most 1,000,000, got 1;"),
        ({"num_classes": np.array([5, 6])}, r"num_classes must be one integer >= 2"),
        ({"num_classes": np.array(5.0)}, r"num_classes must be one integer >= 2"),
        ({"x_test": np.full((4, 5), np.nan, np.float32)}, r"x_test contains NaN or infinite"),
        (
            {"x_train": np.zeros((0, 5), np.float32), "y_train": np.zeros(0, np.int64)},
            r"x_train has no rows",
        ),
        ({"x_train": np.array([{"a": 1}] * 6, dtype=object)}, r"not an \.npz of plain arrays"),
    ],
)
def test_bad_npz(tmp_path, changes, message):
    path = _write(tmp_path, **changes)
    with pytest.raises(DataError, match=rf"timit\.npz: (.*; )?{message}"):
        read_timit_npz(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.npz: file not found; expected an \.npz with x_train"):
        load("timit", source=tmp_path / "nope.npz")


def test_single_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(DataError, match=r"x\.npy: is a single \.npy array, expected an \.npz"):
        read_timit_npz(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "g.npz"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match=r"g\.npz: not an \.npz \(zip\) file \(File is not a zip file\)"):
        read_timit_npz(path)


def test_npz_with_corrupt_member(tmp_path):
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            zf.writestr(f"{key}.npy", b"\x93NUMPY garbage header")
    with pytest.raises(DataError, match=r"c\.npz!x_train\.npy: not a \.npy array \(header version"):
        read_timit_npz(path)


def test_truncated_npz(tmp_path):
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"timit\.npz: not an \.npz \(zip\) file"):
        read_timit_npz(path)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(DataError, match=r"is a folder, expected a file; expected an \.npz"):
        read_timit_npz(tmp_path)
