"""Shared fixtures: a tiny synthetic dataset and an isolated run store."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from sharpminima.data.base import Dataset
from sm_testing import make_tiny

# Property tests: no deadline (first calls compile and warm caches); under CI the examples
# are derived from each test's name, so a run is reproducible and a failure prints its blob.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def tiny() -> Dataset:
    return make_tiny()


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    """Keep every test's run store out of the working directory."""
    monkeypatch.setenv("SHARPMINIMA_STORE", str(tmp_path / "store"))
