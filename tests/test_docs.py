"""The worked examples of docs/measure-your-model.md run as written."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "measure-your-model.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_its_three_examples():
    text = DOC.read_text()
    for heading in ("## 1. An image model read through a DataLoader", "## 2. A Hugging Face classifier",
                    "## 3. A Lightning module while it trains"):
        assert heading in text
    assert len(_blocks()) == 4


def test_every_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)  # the Trainer example writes its output folder here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {}
    for block in _blocks():  # later blocks use names of earlier ones, as a reader would
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "176" in out  # the language model's 16 x 11 predicted tokens
