"""Shared fixtures: a tiny synthetic dataset and an isolated run store."""

from __future__ import annotations

import pytest

from sharpminima.data.base import Dataset
from sm_testing import make_tiny


@pytest.fixture
def tiny() -> Dataset:
    return make_tiny()


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    """Keep every test's run store out of the working directory."""
    monkeypatch.setenv("SHARPMINIMA_STORE", str(tmp_path / "store"))
