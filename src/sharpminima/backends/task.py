"""The unit of work a cluster worker runs: train one config in a private store, return it.

:func:`train_task` is what a Ray task or a SLURM job executes. It never touches the
user's store: it trains in a temporary store (warm-start runs it needs are imported into
it first) and returns the finished run as a :class:`~sharpminima.store.transfer.RunBundle`
for the driver to import. It is idempotent, so a worker killed mid-run can simply be
retried: the retry starts again from scratch and the driver still imports the run once.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

__all__ = ["init_run_id", "train_task"]

log = logging.getLogger(__name__)


def init_run_id(init_from: str | None) -> str | None:
    """The run id a config warm-starts from (``"RUN_ID"`` or ``"RUN_ID@EPOCH"``), or None."""
    if not init_from:
        return None
    return init_from.partition("@")[0]


def train_task(payload: dict[str, Any], dataset: Any = None) -> dict[str, Any]:
    """Train one run in a temporary store and return it as a bundle.

    Args:
        payload: ``{"config": TrainConfig dict, "inits": [bundles of warm-start runs],
            "device": str or None}``. The run trains with its config's ``num_threads``,
            whatever the worker reserved, so its weights are those of a local run.
        dataset: The data (a :class:`~sharpminima.data.Dataset`); loaded from the
            config on the worker when None.

    Returns:
        The run's bundle; a run that raised comes back ``failed`` with its error as the
        message (the sweep goes on).
    """
    from sharpminima.config import TrainConfig
    from sharpminima.store import Store
    from sharpminima.store.transfer import export_run, import_run
    from sharpminima.train import train

    config = TrainConfig.from_dict(payload["config"])
    with tempfile.TemporaryDirectory(prefix="sharpminima-task-") as tmp:
        store = Store(tmp)
        try:
            for bundle in payload.get("inits", ()):
                import_run(store, bundle)
            train(config, dataset=dataset, store=store, device=payload.get("device"))
        except Exception as exc:  # recorded, returned: one failing run does not stop a sweep
            log.warning("run of %s failed: %s: %s", config.hash()[:12], type(exc).__name__, exc)
            record, _ = store.get_or_create_run(config.to_dict(), config.hash())
            if record.status not in ("done", "diverged"):
                store.set_status(record.id, "failed", f"{type(exc).__name__}: {exc}")
        record, _ = store.get_or_create_run(config.to_dict(), config.hash())
        bundle = export_run(store, record.id)
        store.close()
    return bundle
