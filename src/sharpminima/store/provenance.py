"""Provenance of a run: the code version and the machine that made it.

Recorded with every run (:class:`~sharpminima.store.Store`) and in every report, so a
number can be traced to the commit and the machine that produced it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpminima.errors import StoreError

logger = logging.getLogger(__name__)

_GIT_TIMEOUT_S = 5.0


@functools.cache
def code_version() -> str:
    """Return the code version recorded with new runs (computed once per process).

    The short git commit of the repository holding the installed package, with
    ``-dirty`` appended when the work tree has uncommitted changes; the package
    ``__version__`` when the package is not a tracked file of a git work tree (an
    installed wheel, no git, no commit yet) or git does not answer within 5 s.

    Returns:
        E.g. ``"3f2a9c1"``, ``"3f2a9c1-dirty"`` or ``"0.1.0"``.
    """
    import sharpminima

    pkg_dir = Path(sharpminima.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args],
            cwd=pkg_dir,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=True,
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not git("ls-files", "--", "__init__.py"):  # e.g. a venv inside some repo
            return sharpminima.__version__
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return sharpminima.__version__
    return f"{commit}-dirty" if dirty else commit


def loaded_code_files() -> list[str]:
    """The package's source files loaded in this process, as ``sharpminima/train/loop.py``.

    Recorded with published results (``code_files`` in their environment), so that
    :func:`sharpminima.report.published.check` calls a results folder stale only when code
    it ran changed: a new module that a job did not load can only change its output through
    a loaded module that imports it, and that module's change is seen.

    Returns:
        Sorted POSIX paths relative to the directory holding the package.
    """
    import sharpminima

    root = Path(sharpminima.__file__).resolve().parent.parent
    files = set()
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if name == "__main__" and spec is not None:  # ``python -m sharpminima``
            name = spec.name
        if name != "sharpminima" and not name.startswith("sharpminima."):
            continue
        path = getattr(module, "__file__", None)
        if path:
            with contextlib.suppress(ValueError):
                files.add(Path(path).resolve().relative_to(root).as_posix())
    return sorted(files)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache
def machine_info() -> dict[str, Any]:
    """Describe this machine for the run record (computed once per process).

    Returns:
        ``platform``, ``hostname``, ``python``, ``torch``, ``cpu`` (model name),
        ``cpu_count``, ``cuda`` (name of CUDA device 0, or None) and ``cuda_count``.
    """
    import torch

    cuda_name, cuda_count = None, 0
    try:
        if torch.cuda.is_available():
            cuda_count = torch.cuda.device_count()
            cuda_name = torch.cuda.get_device_name(0)
    except Exception as exc:  # e.g. CUDA in a forked child; the run record can do without
        logger.warning("could not query CUDA devices: %s", exc)
    return {
        "platform": platform.platform(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda": cuda_name,
        "cuda_count": cuda_count,
    }


@dataclass
class MeasurementTally:
    """How many distinct measurements a job computed, and how many it read from the run store.

    A measurement the job asks for again (from the store it just filled, or computed again
    without a store) counts once, as what it was the first time.

    Attributes:
        computed: Measurements computed by this job.
        reused: Measurements found in the store that an earlier job computed.
    """

    computed: int = 0
    reused: int = 0
    seen: set[tuple[str, str, str]] = field(default_factory=set, repr=False, compare=False)

    def note(self, owner: str, measure: str, params: dict[str, Any], reused: bool) -> None:
        """Count a request for ``measure`` of ``owner`` with ``params``, once per measurement."""
        key = (owner, measure, json.dumps(params, sort_keys=True, default=str))
        if key in self.seen:
            return
        self.seen.add(key)
        if reused:
            self.reused += 1
        else:
            self.computed += 1


_TALLY: contextvars.ContextVar[MeasurementTally | None] = contextvars.ContextVar(
    "sharpminima_measurement_tally", default=None
)


@contextlib.contextmanager
def count_measurements() -> Iterator[MeasurementTally]:
    """Count the measurements made inside the block, computed or read from the store.

    :func:`~sharpminima.landscape.registry.cached_measure` reports every measurement to the
    innermost active tally (there is none outside such a block).
    """
    tally = MeasurementTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def note_measurement(owner: str, measure: str, params: dict[str, Any], reused: bool) -> None:
    """Count one measurement request in the active tally, if any (see :class:`MeasurementTally`)."""
    tally = _TALLY.get()
    if tally is not None:
        tally.note(owner, measure, params, reused)


def inputs_provenance(store: Any, run_ids: Iterable[str], tally: MeasurementTally | None) -> dict[str, Any]:
    """Which commits trained the runs behind a result, and where its measurements came from.

    A results folder names the commit that wrote it (``code_version``). Its runs and
    measurements may come from a run store that earlier commits filled; this says which,
    so a folder rebuilt from the store shows that it was.

    Args:
        store: The run store (None: no runs to look up).
        run_ids: The runs the result uses.
        tally: The job's :func:`count_measurements` tally (None: not counted).

    Returns:
        ``runs_trained_by`` (commit -> number of runs: the commit that started each run in
        the store, which a run resumed by a later commit keeps; ``"not in the store"`` for a
        run the store lacks) and ``measurements_last_call`` (``computed``, ``read_from_store``).
    """
    out: dict[str, Any] = {}
    if store is not None:
        by_commit: dict[str, int] = {}
        for run_id in sorted(set(run_ids)):
            try:
                version = store.get_run(run_id).code_version
            except StoreError as exc:
                logger.debug("run %s: %s", run_id, exc)
                version = "not in the store"
            by_commit[version] = by_commit.get(version, 0) + 1
        out["runs_trained_by"] = dict(sorted(by_commit.items()))
    if tally is not None:
        out["measurements_last_call"] = {"computed": tally.computed, "read_from_store": tally.reused}
    return out
