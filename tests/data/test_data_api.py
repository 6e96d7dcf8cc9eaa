import json
import os
from pathlib import Path

import _data_helpers as helpers
import numpy as np
import pytest

from sharpminima.data import NAMES, cache_path, data_dir, fetch, info, load
from sharpminima.data.cache import FORMAT_VERSION, read_cache, read_cache_meta
from sharpminima.data.safe_io import save_npz
from sharpminima.errors import DataError


@pytest.fixture
def idx(tmp_path):
    helpers.write_idx_dir(tmp_path / "idx")
    return tmp_path / "idx"


# ------------------------------------------------------------------ data_dir


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("SHARPMINIMA_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "sharpminima"
    monkeypatch.setenv("SHARPMINIMA_DATA", "")
    assert data_dir() == tmp_path / "home" / ".cache" / "sharpminima"
    monkeypatch.setenv("SHARPMINIMA_DATA", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_dir("~/x") == tmp_path / "home" / "x"
    assert cache_path("mnist") == tmp_path / "env" / "mnist.npz"


def test_env_var_is_used_by_load(tmp_path, idx, monkeypatch):
    monkeypatch.setenv("SHARPMINIMA_DATA", str(tmp_path / "env"))
    fetch("mnist", source=idx)
    assert os.listdir(tmp_path / "env") == ["mnist.npz"]
    assert load("mnist").num_train == 5


# ------------------------------------------------------------------ names and options


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError, match=r"^unknown dataset 'imagenet'; choose one of mnist, cifar10"):
        load("imagenet")
    assert NAMES == ("mnist", "cifar10", "cifar100", "timit", "synthetic")


def test_name_aliases(tmp_path):
    with pytest.raises(DataError, match=r"^CIFAR-10 cannot be downloaded"):
        load("CIFAR-10", root=tmp_path)
    with pytest.raises(DataError, match=r"^CIFAR-100 cannot be downloaded"):
        fetch("cifar_100", root=tmp_path)
    assert load("Synthetic", num_train=5, num_test=5).num_train == 5


def test_synthetic_cannot_be_fetched():
    with pytest.raises(DataError, match=r"^synthetic is generated on the fly; there is nothing to fetch"):
        fetch("synthetic")


@pytest.mark.parametrize("limit", [0, -3, 2.5, "10"])
def test_bad_limits(limit):
    with pytest.raises(DataError, match=r"^train_limit must be a positive integer, got"):
        load("synthetic", train_limit=limit)
    with pytest.raises(DataError, match=r"^test_limit must be a positive integer, got"):
        load("synthetic", test_limit=limit)


def test_unexpected_options(tmp_path):
    with pytest.raises(DataError, match=r"^mnist: unexpected option\(s\) seed; it accepts none"):
        load("mnist", root=tmp_path, seed=3)
    with pytest.raises(DataError, match=r"^cifar10: unexpected option\(s\) noise; it accepts verify, exp"):
        load("cifar10", root=tmp_path, noise=1.0)


# ------------------------------------------------------------------ fetch semantics


def test_fetch_reuses_rebuilds_and_forces(tmp_path, caplog):
    root = tmp_path / "cache"
    helpers.write_idx_dir(tmp_path / "a", seed=1)
    helpers.write_idx_dir(tmp_path / "b", seed=2, n_train=7)
    path = fetch("mnist", root=root, source=tmp_path / "a")
    created = read_cache_meta(path)["created"]
    assert fetch("mnist", root=root, source=tmp_path / "a") == path  # same source: kept
    assert fetch("mnist", root=root) == path  # no source: whatever is cached
    assert read_cache_meta(path)["created"] == created
    fetch("mnist", root=root, source=tmp_path / "b")  # another source: rebuilt
    assert read_cache(path).x_train.shape[0] == 7
    os.remove(tmp_path / "b" / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match=r"missing train-images-idx3-ubyte"):
        fetch("mnist", root=root, source=tmp_path / "b", force=True)
    assert read_cache(path).x_train.shape[0] == 7  # the failed rebuild left the cache alone


def test_corrupt_cache_is_rebuilt_from_an_explicit_source(tmp_path, idx):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "mnist.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"mnist\.npz: unreadable dataset cache .*--force`$"):
        load("mnist", root=root)
    assert load("mnist", root=root, source=idx).num_train == 5


# ------------------------------------------------------------------ the cache file


def test_cache_roundtrip_and_info(tmp_path, idx):
    root = tmp_path / "cache"
    path = fetch("mnist", root=root, source=idx)
    ds = load("mnist", root=root)
    with np.load(path, allow_pickle=False) as npz:
        assert npz["x_train"].dtype == np.uint8
        meta = json.loads(str(npz["meta_json"]))
    assert meta["format_version"] == FORMAT_VERSION and meta["pixel_scale"] == 255.0
    (entry,) = info(root)
    assert entry["name"] == "mnist" and entry["path"] == str(path)
    assert entry["num_train"] == 5 and entry["num_test"] == 3
    assert entry["input_shape"] == [1, 28, 28] and entry["num_classes"] == 10
    assert entry["file_bytes"] == path.stat().st_size and len(entry["sha256"]) == 64
    assert entry["source"] == str(idx.resolve()) and entry["checksums"] == ds.meta["checksums"]


def test_info_of_empty_and_corrupt_caches(tmp_path):
    assert info(tmp_path / "nothing") == []
    (tmp_path / "cifar10.npz").write_bytes(b"junk")
    (entry,) = info(tmp_path)
    assert entry["name"] == "cifar10" and "unreadable dataset cache" in entry["error"]


def _cache_with(tmp_path: Path, meta: dict, n_train=2) -> Path:
    path = tmp_path / "mnist.npz"
    x = np.zeros((n_train, 1, 28, 28), np.uint8)
    save_npz(
        path,
        x_train=x,
        y_train=np.zeros(n_train, np.int64),
        x_test=x,
        y_test=np.zeros(n_train, np.int64),
        meta_json=np.array(json.dumps(meta)),
    )
    return path


def _meta(**changes):
    meta = {
        "format_version": FORMAT_VERSION, "name": "mnist", "source": "s", "checksums": {},
        "pixel_scale": 255.0, "num_classes": 10, "class_names": [], "num_train": 2,
        "num_test": 2, "input_shape": [1, 28, 28],
    }  # fmt: skip
    meta.update(changes)
    return meta


def test_cache_from_another_format_version(tmp_path):
    path = _cache_with(tmp_path, _meta(format_version=999))
    with pytest.raises(DataError, match=r"unreadable dataset cache \(format version is not 1\)"):
        read_cache(path)


def test_cache_with_sizes_disagreeing(tmp_path):
    path = _cache_with(tmp_path, _meta(num_train=3))
    with pytest.raises(DataError, match=r"array sizes disagree with its description"):
        read_cache(path)


def test_cache_with_missing_meta_entry(tmp_path):
    meta = _meta()
    del meta["num_classes"]
    with pytest.raises(DataError, match=r"unreadable dataset cache \(KeyError: 'num_classes'\)"):
        read_cache(_cache_with(tmp_path, meta))


def test_cache_without_meta(tmp_path):
    path = tmp_path / "mnist.npz"
    save_npz(path, x_train=np.zeros(2))
    with pytest.raises(DataError, match=r"unreadable dataset cache \(missing meta_json\); delete it"):
        read_cache_meta(path)


def test_missing_cache_file(tmp_path):
    with pytest.raises(DataError, match=r"mnist\.npz: no such cache file; run `sharpminima data fetch"):
        read_cache_meta(tmp_path / "mnist.npz")


def test_library_never_prints(tmp_path, idx, capsys):
    fetch("mnist", root=tmp_path / "cache", source=idx)
    load("mnist", root=tmp_path / "cache")
    assert capsys.readouterr() == ("", "")


def test_cache_that_is_a_single_npy(tmp_path):
    with open(tmp_path / "mnist.npz", "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(DataError, match=r"unreadable dataset cache \(is a single \.npy array"):
        read_cache_meta(tmp_path / "mnist.npz")


def test_cache_whose_meta_is_not_a_dict(tmp_path):
    path = tmp_path / "mnist.npz"
    save_npz(path, meta_json=np.array("[1, 2]"))
    with pytest.raises(DataError, match=r"unreadable dataset cache \(format version is not 1\)"):
        read_cache_meta(path)
