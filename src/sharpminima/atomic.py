"""Atomic file writes: readers see the old file or the new one, never a partial file.

Shared by the data cache and the run store (each wraps it with its own error message).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (not every platform lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_target(path: Path, on_error: Callable[[Path, OSError], Exception]) -> Iterator[IO[bytes]]:
    """Yield a temporary file that replaces ``path`` atomically when the block succeeds.

    The temporary file (``.NAME.*.tmp``) lives in ``path``'s folder, so ``os.replace`` is a
    rename within one file system; it is flushed and fsynced before the rename, the folder
    is fsynced after it, and the temporary file is deleted if anything raises,
    ``KeyboardInterrupt`` included. The folder is created if missing.

    Args:
        path: Final destination.
        on_error: Builds the exception raised when the folder cannot be created or written.

    Yields:
        A binary file object to write the new content to.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise on_error(path, exc) from exc
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches and results are meant to be shared
        os.replace(tmp, path)
        done = True
        fsync_dir(path.parent)
    finally:
        if not done:
            tmp.unlink(missing_ok=True)
