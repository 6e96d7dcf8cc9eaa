"""Checkpoints: bit-exact round trips, exact resumption, atomic writes, refused corruption."""

from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from sharpminima.errors import StoreError
from sharpminima.store import (
    atomic_write_text,
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from sharpminima.store import checkpoints as ckpt


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))  # drawn from the global RNG
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _trained(steps: int = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(steps):
        _step(model, opt)
    return model, opt


def _assert_same(a, b, where="root"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.numpy().tobytes() == b.numpy().tobytes(), where  # bitwise, NaN-safe
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where  # same keys, key types and order
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def _roundtrip(state, path):
    tensors, meta = flatten_state(state)
    save_checkpoint(path, tensors, meta)
    tensors, meta = load_checkpoint(path)
    return unflatten_state(tensors, meta)


def _tmp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_training_state_round_trips_bit_identically(tmp_path):
    model, opt = _trained()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "rng": torch.get_rng_state(),
        "np_rng": np.random.get_state(),
        "extras": {
            "best": math.inf,
            "worst": -math.inf,
            "loss": math.nan,
            "neg_zero": -0.0,
            "third": 1 / 3,
            "big": 2**70,
            "words": ["NaN", "Infinity", "-Infinity", "plain", ""],
            "t": (1, 2.5, None, True, False),
            "f64": torch.randn(3, dtype=torch.float64),
            "scalar": torch.tensor(7, dtype=torch.int64),
            "empty": torch.zeros(0, 4),
            "flags": torch.tensor([True, False]),
            1.5: "float key",
            None: "none key",
            "nan_key": {math.nan: 1},
        },
    }
    back = _roundtrip(state, tmp_path / "ck.safetensors")
    state["extras"].pop("nan_key")  # NaN != NaN as a key: checked separately below
    nan_key = back["extras"].pop("nan_key")
    assert math.isnan(next(iter(nan_key)))
    _assert_same(state, back)
    assert back["rng"].dtype == torch.uint8
    assert back["model"]["1.num_batches_tracked"].dtype == torch.int64
    assert isinstance(next(iter(back["optimizer"]["state"])), int)
    assert back["model"]._metadata == state["model"]._metadata  # module versions kept
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)


def test_tensor_names_follow_the_state_paths():
    model, opt = _trained(1)
    tensors, _ = flatten_state({"model": model.state_dict(), "optimizer": opt.state_dict()})
    assert "model/0.weight" in tensors
    assert "optimizer/state/0/exp_avg" in tensors
    assert "optimizer/state/0/step" in tensors


def test_clashing_names_are_disambiguated_and_key_types_kept(tmp_path):
    a, b, c = torch.ones(2), torch.zeros(2), torch.arange(3)
    state = {0: a, "0": b}
    tensors, _ = flatten_state(state)
    assert sorted(tensors) == ["0", "0~1"]
    _assert_same(state, _roundtrip(state, tmp_path / "a.safetensors"))
    _assert_same(c, _roundtrip(c, tmp_path / "b.safetensors"))  # a bare tensor as the state


def test_resumed_optimizer_continues_identically(tmp_path):
    model, opt = _trained()
    tensors, meta = flatten_state(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
    )
    save_checkpoint(tmp_path / "ck.safetensors", tensors, {**meta, "epoch": 3})
    for _ in range(2):
        _step(model, opt)

    torch.manual_seed(123)  # a different init and RNG position, all overwritten by the load
    model2 = _model()
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    tensors, meta = load_checkpoint(tmp_path / "ck.safetensors")
    assert meta["epoch"] == 3
    state = unflatten_state(tensors, meta)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    for _ in range(2):
        _step(model2, opt2)
    _assert_same(model.state_dict(), model2.state_dict())
    _assert_same(opt.state_dict(), opt2.state_dict())


def test_views_shared_and_grad_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    param = nn.Parameter(torch.randn(2, 3))
    tensors = {
        "base": base,
        "same": base,
        "rows": base[1:],
        "transposed": base.t(),
        "param": param,
        "param_t": param.t(),
    }
    save_checkpoint(tmp_path / "v.safetensors", tensors, {})
    back, meta = load_checkpoint(tmp_path / "v.safetensors", device=torch.device("cpu"))
    assert meta == {}
    for name, tensor in tensors.items():
        assert back[name].is_contiguous() and not back[name].requires_grad
        assert torch.equal(back[name], tensor.detach()), name


def test_load_moves_tensors_to_the_requested_device(tmp_path):
    save_checkpoint(tmp_path / "d.safetensors", {"x": torch.ones(2)}, {})
    back, _ = load_checkpoint(tmp_path / "d.safetensors", device="meta")
    assert back["x"].device.type == "meta"


def test_sidecar_holds_meta_hash_and_size(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"x": torch.ones(3)}, {"epoch": 2, "loss": math.nan, "b": [1, 2]})
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["size"] == path.stat().st_size
    assert len(sidecar["sha256"]) == 64
    assert sidecar["meta"] == {"b": [1, 2], "epoch": 2, "loss": "NaN"}  # strict JSON
    _, meta = load_checkpoint(path)
    assert meta["epoch"] == 2 and math.isnan(meta["loss"])
    assert _tmp_files(tmp_path) == []


@pytest.mark.parametrize("failing_call", [1, 2])
def test_failed_replace_leaves_no_temp_file(tmp_path, monkeypatch, failing_call):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"x": torch.zeros(4)}, {"epoch": 1})
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"x": torch.ones(4)}, {"epoch": 2})
    monkeypatch.undo()
    assert _tmp_files(tmp_path) == []
    if failing_call == 1:  # the tensor file never moved: the old checkpoint is intact
        tensors, meta = load_checkpoint(path)
        assert meta == {"epoch": 1} and torch.equal(tensors["x"], torch.zeros(4))
    else:  # new tensors, old sidecar: refused, never silently mismatched
        with pytest.raises(StoreError, match="sha256 .* differs"):
            load_checkpoint(path)


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"x": torch.zeros(4)}, {"epoch": 1})

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        save_checkpoint(path, {"x": torch.ones(4)}, {"epoch": 2})
    monkeypatch.undo()
    assert _tmp_files(tmp_path) == []
    assert load_checkpoint(path)[1] == {"epoch": 1}


def test_safetensors_failure_is_a_store_error(tmp_path, monkeypatch):
    def refuse(tensors):
        raise ValueError("unsupported dtype")

    monkeypatch.setattr(ckpt, "st_save", refuse)
    with pytest.raises(StoreError, match="safetensors cannot encode the tensors"):
        save_checkpoint(tmp_path / "x.safetensors", {"x": torch.ones(1)}, {})
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_bad_arguments(tmp_path):
    good = {"x": torch.ones(1)}
    with pytest.raises(StoreError, match="must end in .safetensors"):
        save_checkpoint(tmp_path / "x.json", good, {})
    with pytest.raises(StoreError, match="meta must be a dict"):
        save_checkpoint(tmp_path / "x.safetensors", good, [1])
    with pytest.raises(StoreError, match="meta is not JSON-serialisable"):
        save_checkpoint(tmp_path / "x.safetensors", good, {"s": {1, 2}})
    with pytest.raises(StoreError, match="must map str to torch.Tensor"):
        save_checkpoint(tmp_path / "x.safetensors", {"x": [1.0]}, {})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot write to"):
        save_checkpoint(blocker / "x.safetensors", {"x": torch.ones(1)}, {})
    with pytest.raises(StoreError, match="cannot write to"):
        atomic_write_text(blocker / "x.txt", "hi")


def test_atomic_write_text(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "first ü")
    atomic_write_text(path, "second")
    assert path.read_text(encoding="utf-8") == "second"
    assert _tmp_files(path.parent) == []


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, {"x": torch.arange(100.0)}, {"epoch": 1})
    return path


def test_load_refuses_missing_files(saved, tmp_path):
    with pytest.raises(StoreError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(StoreError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "dir.safetensors")
    saved.with_suffix(".json").unlink()
    with pytest.raises(StoreError, match="no sidecar ck.json, so the checkpoint was never"):
        load_checkpoint(saved)


def test_load_refuses_bad_sidecars(saved):
    sidecar = saved.with_suffix(".json")
    sidecar.write_text("{not json")
    with pytest.raises(StoreError, match="sidecar ck.json is unreadable"):
        load_checkpoint(saved)
    for bad in ([1, 2], {"format": "other"}, {"format": ckpt.SIDECAR_FORMAT, "sha256": "x"}):
        sidecar.write_text(json.dumps(bad))
        with pytest.raises(StoreError, match="not a sharpminima checkpoint sidecar"):
            load_checkpoint(saved)


def test_load_refuses_truncated_and_corrupt_files(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:-10])
    with pytest.raises(StoreError, match=r"size \d+ bytes differs from \d+ in its sidecar"):
        load_checkpoint(saved)
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    saved.write_bytes(bytes(flipped))
    with pytest.raises(StoreError, match="sha256 .* differs from .* in its sidecar"):
        load_checkpoint(saved)


def test_load_refuses_invalid_safetensors_even_with_matching_hash(tmp_path):
    path = tmp_path / "junk.safetensors"
    ckpt.atomic_write_bytes(path, b"\x00" * 64)
    tensors, meta = {}, {}
    save_checkpoint(tmp_path / "real.safetensors", tensors, meta)
    sidecar = json.loads((tmp_path / "real.json").read_text())
    sidecar.update(sha256=hashlib.sha256(b"\x00" * 64).hexdigest(), size=64)
    (tmp_path / "junk.json").write_text(json.dumps(sidecar))
    with pytest.raises(StoreError, match="not a valid safetensors file"):
        load_checkpoint(path)


def test_flatten_refuses_unsupported_values():
    with pytest.raises(StoreError, match="cannot checkpoint set at opt/x"):
        flatten_state({"opt": {"x": {1, 2}}})
    with pytest.raises(StoreError, match=r"cannot checkpoint tuple at \(1, 2\)"):
        flatten_state({(1, 2): torch.ones(1)})
    with pytest.raises(StoreError, match="numpy array of dtype object at a"):
        flatten_state({"a": np.array([object()])})


def test_unflatten_refuses_incomplete_input():
    tensors, meta = flatten_state({"a": torch.ones(1)})
    with pytest.raises(StoreError, match="has no 'state_structure' entry"):
        unflatten_state(tensors, {"epoch": 1})
    with pytest.raises(StoreError, match="has no tensor 'a'"):
        unflatten_state({}, meta)
