"""Network factories for the cluster tests, importable by Ray workers and submitit jobs.

The tests put this folder on ``PYTHONPATH`` (inherited by every worker process) and set:

* ``SM_TEST_DRIVER_PID``: the driver's pid; a factory only misbehaves in a Ray worker
  or a submitit job, never in that process;
* ``SM_TEST_KILL_MARKER``: a file; ``dies_once`` kills its own process (SIGKILL, like
  the OOM killer or a lost node) the first time any worker calls it, and builds the
  network normally on the retry;
* ``SM_TEST_SLOW_S``: seconds ``slow`` sleeps before building, so a test can interrupt
  the driver while runs are in flight.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from torch import nn


def _mlp(input_shape, num_classes) -> nn.Module:
    features = 1
    for d in input_shape:
        features *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, num_classes))


def _in_worker() -> bool:
    """True in a Ray worker or a submitit job, never in the driver."""
    argv = " ".join(sys.argv)
    engine = "default_worker" in argv or "submitit" in argv
    return engine and str(os.getpid()) != os.environ.get("SM_TEST_DRIVER_PID", "")


def dies_once(input_shape, num_classes) -> nn.Module:
    marker = Path(os.environ["SM_TEST_KILL_MARKER"])
    if _in_worker() and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return _mlp(input_shape, num_classes)


def raises(input_shape, num_classes) -> nn.Module:
    raise ValueError("this network cannot be built")


def slow(input_shape, num_classes) -> nn.Module:
    if _in_worker():
        time.sleep(float(os.environ.get("SM_TEST_SLOW_S", "30")))
    return _mlp(input_shape, num_classes)
