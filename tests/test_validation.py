"""The typed validators shared by configs and the command line, and the store's bounded reads."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sharpminima.config import TrainConfig
from sharpminima.errors import ConfigError, StoreError
from sharpminima.store import _json
from sharpminima.validation import (
    MAX_INT,
    Bound,
    check_device,
    check_number,
    check_output_file,
    check_text,
)


@pytest.mark.parametrize(
    ("value", "bound", "message"),
    [
        (math.nan, Bound(), "x must be a finite number, got nan"),
        (-math.inf, Bound(), "got -inf"),
        (True, Bound(), "got True"),
        ("3", Bound(), "got '3'"),
        (1.5, Bound(ge=0, integer=True), "x must be a non-negative integer, got 1.5"),
        (MAX_INT + 1, Bound(integer=True), "of at most"),
        (0, Bound(gt=0), "x must be a positive number, got 0"),
        (2.0, Bound(ge=0, le=1), "x must be a finite number in [0, 1], got 2.0"),
        (1.0, Bound(ge=0, lt=1), "in [0, 1)"),
        (11, Bound(ge=1, le=10, integer=True), "a positive integer (at most 10), got 11"),
    ],
)
def test_check_number_rejects(value, bound, message):
    with pytest.raises(ConfigError) as exc:
        check_number("x", value, bound)
    assert message in str(exc.value)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(), st.text()))
def test_check_number_returns_the_value_or_raises_config_error(value):
    try:
        assert check_number("x", value, Bound(ge=-1, le=1)) == value
    except ConfigError as exc:
        assert str(exc).startswith("x must be") and "\n" not in str(exc)


def test_check_text_and_device():
    assert check_text("--net", "f1") == "f1"
    with pytest.raises(ConfigError, match="NUL character"):
        check_text("--net", "f\x001")
    with pytest.raises(ConfigError, match="at most 10 are accepted"):
        check_text("--net", "x" * 11, max_length=10)
    assert check_device("--device", "cpu") == torch.device("cpu")
    assert check_device("--device", None).type in ("cpu", "cuda")
    for bad, message in (("bogus", "is not a device"), ("cpu:1", "only cuda takes an index"),
                         ("gpu", "is not a device")):
        with pytest.raises(ConfigError, match=message):
            check_device("--device", bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            check_device("--device", "cuda:0")
    else:
        with pytest.raises(ConfigError, match="CUDA device\\(s\\) are visible"):
            check_device("--device", "cuda:999")


def test_check_output_file(tmp_path):
    assert check_output_file("--out", tmp_path / "fig.png", (".png",)) == tmp_path / "fig.png"
    (tmp_path / "d.png").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="must end in .png or .pdf"):
        check_output_file("--out", tmp_path, (".png", ".pdf"))
    with pytest.raises(ConfigError, match="is a folder"):
        check_output_file("--out", tmp_path / "d.png", (".png",))
    with pytest.raises(ConfigError, match="is not a folder"):
        check_output_file("--out", tmp_path / "f" / "x.png", (".png",))
    with pytest.raises(ConfigError, match="not a regular file"):
        check_output_file("--out", "/dev/null")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lr": math.inf}, "learning rate must be a positive number, got inf"),
        ({"momentum": math.nan}, "momentum must be a finite number in [0, 1]"),
        ({"weight_decay": -1}, "weight decay must be a non-negative number"),
        ({"betas": [0.9]}, "betas must be two numbers"),
        ({"betas": [0.9, 1.0]}, "in [0, 1)"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"num_threads": 0}, "num_threads must be a positive integer (at most 1024)"),
        ({"net": 5}, "net must be text"),
        ({"tags": 5}, "is malformed"),
        ({"optimizer_args": 3}, "is malformed"),
    ],
)
def test_config_from_a_tampered_store_is_one_config_error(data, message):
    with pytest.raises(ConfigError) as exc:
        TrainConfig.from_dict(data)
    assert message in str(exc.value)
    with pytest.raises(ConfigError, match="must be a dict"):
        TrainConfig.from_dict([])  # type: ignore[arg-type]


def test_json_reads_are_bounded(monkeypatch):
    assert _json.loads('{"a": ["NaN", 1]}')["a"][0] != _json.loads('{"a": ["NaN", 1]}')["a"][0]  # NaN
    with pytest.raises(StoreError, match="nested deeper than 100 levels"):
        _json.parse("[" * 200_000 + "]" * 200_000)
    with pytest.raises(StoreError, match="nested deeper than 100 levels"):
        _json.parse("[" * 101 + "]" * 101)
    assert _json.parse("[" * 100 + "]" * 100) is not None
    with pytest.raises(StoreError, match="not valid JSON"):
        _json.loads("{")
    monkeypatch.setattr(_json, "MAX_CHARS", 10)
    with pytest.raises(StoreError, match="characters long"):
        _json.parse('{"a": "0123456789"}')
