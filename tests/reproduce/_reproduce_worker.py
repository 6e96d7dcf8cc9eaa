"""Subprocess body of the kill test: run the tiny reproduction (killed by the parent)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from repro_cases import TINY  # noqa: E402

from sharpminima.reproduce import reproduce  # noqa: E402
from sharpminima.store import Store  # noqa: E402

if __name__ == "__main__":
    store_dir, out = sys.argv[1], Path(sys.argv[2])
    reproduce(TINY, store=Store(store_dir), out=out)
