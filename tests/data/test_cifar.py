import os
import pickle

import _data_helpers as helpers
import numpy as np
import pytest
import torch

from sharpminima.data import fetch, info, load
from sharpminima.data.cifar import CIFAR10, CIFAR100, read_cifar
from sharpminima.errors import DataError


@pytest.fixture
def cifar10(tmp_path):
    return helpers.write_cifar(tmp_path / "cifar-10-python.tar.gz")


@pytest.fixture
def cifar100(tmp_path):
    return helpers.write_cifar(tmp_path / "cifar-100-python.tar.gz", "cifar100")


def _with_pixel(tmp_path, name="cifar10"):
    """An archive whose first training row has known values at known (c, h, w)."""
    rows = np.zeros((2, 3072), dtype=np.uint8)
    rows[0, 0 * 1024 + 0 * 32 + 1] = 200  # red, row 0, column 1
    rows[0, 1 * 1024 + 3 * 32 + 0] = 100  # green, row 3, column 0
    rows[0, 2 * 1024 + 31 * 32 + 5] = 77  # blue, row 31, column 5
    rows[1, 1023] = 255  # red, row 31, column 31 of the second image
    first = helpers.CIFAR_LAYOUT[name]["train"][0]
    batch = helpers.cifar_batch(name, rows, [1, 2], b"training batch 1 of 5")
    return helpers.write_cifar(tmp_path / f"{name}.tar.gz", name, replace={first: helpers.py2_dumps(batch)})


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_pixel_layout_is_channel_height_width(tmp_path, name):
    archive = _with_pixel(tmp_path, name)
    ds = load(name, root=tmp_path / "cache", source=archive["path"], expected_md5=archive["md5"])
    x = ds.x_train
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
    assert x[0, 0, 0, 1] == np.float32(200) / np.float32(255)
    assert x[0, 1, 3, 0] == np.float32(100) / np.float32(255)
    assert x[0, 2, 31, 5] == np.float32(77) / np.float32(255)
    assert x[1, 0, 31, 31] == 1.0
    assert x[0].count_nonzero() == 3 and x[1].count_nonzero() == 1
    assert ds.y_train[:2].tolist() == [1, 2]


def test_cifar10_contents(cifar10, tmp_path):
    ds = load("cifar10", root=tmp_path / "c", source=cifar10["path"], expected_md5=cifar10["md5"])
    assert ds.num_train == 20 and ds.num_test == 3 and ds.num_classes == 10
    expected = torch.from_numpy(cifar10["x_train"]).float().div(255).reshape(20, 3, 32, 32)
    assert torch.equal(ds.x_train, expected)
    assert ds.y_train.tolist() == cifar10["y_train"].tolist()
    assert ds.y_test.tolist() == cifar10["y_test"].tolist()
    assert ds.y_train.dtype == torch.int64
    assert ds.meta["class_names"] == [f"class{i}" for i in range(10)]
    assert ds.meta["checksums"]["archive_md5"] == cifar10["md5"]
    assert ds.meta["pixel_scale"] == 255.0


def test_cifar100_uses_fine_labels(cifar100, tmp_path):
    ds = load("cifar100", root=tmp_path / "c", source=cifar100["path"], expected_md5=cifar100["md5"])
    assert ds.num_classes == 100 and ds.num_train == 20 and ds.input_shape == (3, 32, 32)
    assert ds.y_train.tolist() == cifar100["y_train"].tolist()
    assert ds.meta["class_names"][99] == "fine99"


def test_batches_are_concatenated_in_order_whatever_the_tar_order(tmp_path):
    order = ["test_batch", "data_batch_3", "batches.meta", "data_batch_1", "readme.html"]
    order += ["data_batch_5", "data_batch_2", "data_batch_4"]
    archive = helpers.write_cifar(tmp_path / "c.tar.gz", order=order)
    raw = read_cifar(archive["path"], verify=False)
    np.testing.assert_array_equal(raw.x_train.reshape(-1, 3072), archive["x_train"])


def test_cache_serves_later_loads_without_source(cifar10, tmp_path):
    root = tmp_path / "cache"
    path = fetch("cifar10", root=root, source=cifar10["path"], expected_md5=cifar10["md5"])
    os.remove(cifar10["path"])
    ds = load("cifar10", root=root)
    assert ds.num_train == 20 and ds.meta["cache"] == str(path)
    (entry,) = info(root)
    assert entry["name"] == "cifar10" and entry["source"] == str(cifar10["path"].resolve())
    assert entry["checksums"]["archive_md5"] == cifar10["md5"]


# ------------------------------------------------------------------ checksums


def test_official_md5_is_required_by_default(cifar10, tmp_path):
    with pytest.raises(
        DataError,
        match=rf"cifar-10-python\.tar\.gz: md5 {cifar10['md5']} does not match the expected "
        rf"{CIFAR10.md5} of the official cifar-10-python\.tar\.gz; download it again",
    ):
        fetch("cifar10", root=tmp_path / "cache", source=cifar10["path"])
    assert helpers.listdir(tmp_path / "cache") == []


def test_cifar100_official_md5(cifar100):
    with pytest.raises(DataError, match=rf"expected {CIFAR100.md5} of the official cifar-100"):
        read_cifar(cifar100["path"], "cifar100")


def test_expected_md5_override_mismatch(cifar10):
    with pytest.raises(DataError, match=r"does not match the expected 0{32}"):
        read_cifar(cifar10["path"], expected_md5="0" * 32)


def test_verify_false_skips_md5_with_a_warning(cifar10, caplog):
    with caplog.at_level("WARNING", logger="sharpminima.data.cifar"):
        raw = read_cifar(cifar10["path"], verify=False, expected_md5="0" * 32)
    assert raw.x_train.shape == (20, 3, 32, 32)
    assert "md5 check skipped" in caplog.text


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_cannot_be_downloaded(tmp_path, name):
    title, archive = ("CIFAR-10", "cifar-10") if name == "cifar10" else ("CIFAR-100", "cifar-100")
    with pytest.raises(
        DataError,
        match=rf"^{title} cannot be downloaded here; pass the official {archive}-python\.tar\.gz "
        r"with --from PATH$",
    ):
        load(name, root=tmp_path)


def test_missing_archive(tmp_path):
    with pytest.raises(DataError, match=r"nope\.tar\.gz: file not found; pass the official cifar-10"):
        read_cifar(tmp_path / "nope.tar.gz")


def test_unknown_variant(cifar10):
    with pytest.raises(DataError, match=r"unknown CIFAR variant 'cifar7'; choose cifar10 or cifar100"):
        read_cifar(cifar10["path"], "cifar7")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_archive(cifar10, tmp_path, keep):
    data = cifar10["path"].read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=r"cut\.tar\.gz.*: corrupt or truncated"):
        fetch("cifar10", root=tmp_path / "cache", source=cut, verify=False)
    assert helpers.listdir(tmp_path / "cache") == []


def test_not_a_gzip(tmp_path):
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(os.urandom(5000))
    with pytest.raises(DataError, match=r"junk\.tar\.gz: corrupt or truncated archive \("):
        read_cifar(path, verify=False)


def test_missing_member(tmp_path):
    archive = helpers.write_cifar(tmp_path / "c.tar.gz", replace={"data_batch_3": None})
    with pytest.raises(DataError, match=r"archive lacks cifar-10-batches-py/data_batch_3; expected"):
        read_cifar(archive["path"], verify=False)


def test_several_missing_members(tmp_path):
    archive = helpers.write_cifar(tmp_path / "c.tar.gz", replace={"data_batch_3": None, "batches.meta": None})
    with pytest.raises(DataError, match=r"archive lacks cifar-10-batches-py/batches\.meta and 1 more"):
        read_cifar(archive["path"], verify=False)


def test_malicious_member_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(helpers.Evil(os.system, f"touch {marker}"), protocol=2)
    archive = helpers.write_cifar(tmp_path / "c.tar.gz", replace={"data_batch_2": evil})
    with pytest.raises(DataError, match=r"c\.tar\.gz!cifar-10-batches-py/data_batch_2: refused"):
        read_cifar(archive["path"], verify=False)
    assert not marker.exists()


def _bad_batch(tmp_path, name="cifar10", **changes):
    rows = np.zeros((4, 3072), dtype=np.uint8)
    batch = helpers.cifar_batch(name, rows, [0, 1, 2, 3], b"training batch 1 of 5")
    for key, value in changes.items():
        if value is None:
            batch.pop(key.encode())
        else:
            batch[key.encode()] = value
    member = helpers.CIFAR_LAYOUT[name]["train"][0]
    archive = helpers.write_cifar(tmp_path / "c.tar.gz", name, replace={member: helpers.py2_dumps(batch)})
    return archive["path"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"labels": None},
            r"expected a dict with keys b'data' and b'labels', got \[b'batch_label'",
        ),
        ({"data": None}, r"expected a dict with keys b'data' and b'labels'"),
        ({"data": np.zeros((4, 3071), np.uint8)}, r"b'data' is uint8 \(4, 3071\), expected uint8"),
        ({"data": np.zeros((4, 3072), np.int32)}, r"b'data' is int32 \(4, 3072\), expected uint8"),
        ({"data": np.zeros(3072, np.uint8)}, r"b'data' is uint8 \(3072,\), expected uint8 rows"),
        ({"data": [1, 2]}, r"b'data' is list, expected uint8 rows of 3072"),
        ({"labels": [0, 1, 2]}, r"b'labels' is int64 \(3,\), expected 4 integer labels"),
        ({"labels": [b"a", b"b", b"c", b"d"]}, r"b'labels' is \|S1 \(4,\), expected 4 integer"),
        ({"labels": [[1, 2], [3], 4, 5]}, r"b'labels' is object \(\), expected 4 integer labels"),
        ({"labels": [0, 1, 2, 10]}, r"labels span \[0, 10\], expected \[0, 9\]"),
        ({"labels": [0, -1, 2, 3]}, r"labels span \[-1, 3\], expected \[0, 9\]"),
    ],
)
def test_bad_cifar10_batches(tmp_path, changes, message):
    path = _bad_batch(tmp_path, **changes)
    with pytest.raises(DataError, match=rf"c\.tar\.gz!cifar-10-batches-py/data_batch_1: {message}"):
        read_cifar(path, verify=False)


def test_batch_that_is_not_a_dict(tmp_path):
    archive = helpers.write_cifar(tmp_path / "c.tar.gz", replace={"test_batch": helpers.py2_dumps([1, 2])})
    with pytest.raises(DataError, match=r"test_batch: expected a dict with keys .* got list"):
        read_cifar(archive["path"], verify=False)


def test_cifar100_label_range(tmp_path):
    path = _bad_batch(tmp_path, "cifar100", fine_labels=[0, 1, 2, 100])
    with pytest.raises(
        DataError, match=r"cifar-100-python/train: labels span \[0, 100\], expected \[0, 99\]"
    ):
        read_cifar(path, "cifar100", verify=False)


@pytest.mark.parametrize("meta", [{b"label_names": [b"a"] * 9}, {b"other": 1}, [b"a"] * 10])
def test_bad_meta(tmp_path, meta):
    archive = helpers.write_cifar(tmp_path / "c.tar.gz", replace={"batches.meta": helpers.py2_dumps(meta)})
    with pytest.raises(DataError, match=r"batches\.meta: expected b'label_names' with 10 class names"):
        read_cifar(archive["path"], verify=False)
