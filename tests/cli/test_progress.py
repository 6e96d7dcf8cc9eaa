"""Progress for long jobs: stage lines on stderr when no bar can be drawn."""

from __future__ import annotations

import pytest

from sharpminima.cli import common
from sharpminima.cli.common import WorkProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def progress(capsys, monkeypatch):
    monkeypatch.setattr(common.STATE, "quiet", False)
    p = WorkProgress("reproduce quick", 100.0, heartbeat=60.0)
    clock = Clock()
    p._clock, p._t0 = clock, 0.0
    return p, clock


def test_each_stage_gets_a_line_with_elapsed_and_time_left(progress, capsys):
    p, clock = progress
    assert p.lines  # pytest's stderr is not a terminal
    clock.now = 30.0
    p(25.0, "[1/2 table2] f1 SB trial 1")
    p(0.0, "[1/2 table2] f1 SB trial 1")  # same stage, no heartbeat due: no line
    clock.now = 120.0
    p(25.0, "[2/2 sharpness] f1 SB")
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "reproduce quick: [1/2 table2] f1 SB trial 1 | 25% of the work, 30s elapsed, about 1m30s left",
        "reproduce quick: [2/2 sharpness] f1 SB | 50% of the work, 2m00s elapsed, about 2m00s left",
        "reproduce quick: done in 2m00s",
    ]


def test_a_long_stage_gets_a_heartbeat(progress, capsys):
    p, clock = progress
    p(10.0, "training")
    clock.now = 61.0
    p(1.0, "training")
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_quiet_prints_nothing(capsys, monkeypatch):
    monkeypatch.setattr(common.STATE, "quiet", True)
    p = WorkProgress("study", 10.0)
    p(5.0, "a")
    p.close()
    assert capsys.readouterr().err == ""


def test_work_beyond_the_plan_is_clamped(progress, capsys):
    p, clock = progress
    p(150.0, "x")
    assert p.done == 100.0
