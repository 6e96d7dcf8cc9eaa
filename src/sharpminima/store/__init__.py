"""The run store: SQLite ledger (:mod:`.db`) and safetensors checkpoints (:mod:`.checkpoints`).

Rows hold config, code version, status and metrics; weights go to safetensors files with
a JSON sidecar, never pickle. See :class:`Store` and :func:`save_checkpoint`.

The checkpoint functions are imported on first use, so code that only reads the ledger
(``sharpminima runs list``, a sweep worker's queue) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sharpminima.store.db import RunRecord, Store

if TYPE_CHECKING:
    from sharpminima.store.checkpoints import (
        atomic_write_text,
        flatten_state,
        load_checkpoint,
        save_checkpoint,
        unflatten_state,
    )

__all__ = [
    "RunRecord",
    "Store",
    "atomic_write_text",
    "flatten_state",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten_state",
]

_LAZY = frozenset(__all__) - {"RunRecord", "Store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("sharpminima.store.checkpoints"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
