"""Run a reproduction: plan, run each experiment through the store, save results, report."""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from sharpminima.errors import ConfigError
from sharpminima.reproduce.context import Context
from sharpminima.reproduce.experiments import ALIASES, EXPERIMENTS, planned_units
from sharpminima.reproduce.presets import Preset
from sharpminima.store.provenance import count_measurements, inputs_provenance

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


def resolve_experiments(preset: Preset, names: Sequence[str] | None) -> list[str]:
    """Map requested names (and aliases like ``table3``) to experiment keys, in order.

    Raises:
        ConfigError: For an unknown experiment name.
    """
    if not names:
        return list(preset.experiments)
    out: list[str] = []
    for name in names:
        key = ALIASES.get(name, name)
        if key not in EXPERIMENTS:
            valid = sorted(set(EXPERIMENTS) | set(ALIASES))
            raise ConfigError(f"unknown experiment {name!r}; choose from {', '.join(valid)}")
        if key not in out:
            out.append(key)
    return out


def reproduce(
    preset: Preset,
    *,
    store: Any,
    out: str | os.PathLike[str],
    experiments: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    sources: dict[str, str] | None = None,
    progress_factory: Callable[[float], Callable[[float, str], None]] | None = None,
    vectorize: bool | None = None,
    backend: Any = None,
) -> dict[str, Any]:
    """Run the preset's experiments (or the named ones) and write ``out/results.json``.

    Results of earlier calls in ``out`` are kept and updated, so experiments can be run one
    at a time. Training runs and measurements are cached in ``store``: rerunning after an
    interruption redoes nothing that finished.

    Args:
        preset: The setup (see :mod:`sharpminima.reproduce.presets`).
        store: The run store.
        out: Output folder for ``results.json`` and the report.
        experiments: Names to run (default: the preset's list).
        device: Where to train and measure (default: CUDA if available).
        sources: User data per dataset (``{"cifar10": "cifar-10-python.tar.gz"}``).
        progress_factory: Called with the planned total work; returns the progress callback.
        vectorize: Train each regime's trials as one batched computation (same runs in the
            store). Default (None): on CUDA only; on the 2-core CPU we measured it slower.
        backend: Where the runs train (:func:`sharpminima.backends.get_backend`); None:
            here. Measures always run here, on the runs the backend put in the store.

    Returns:
        The results dict that the report is drawn from.
    """
    names = resolve_experiments(preset, experiments)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = Context(
        store=store,
        preset=preset,
        device=dev,
        sources=dict(sources or {}),
        vectorize=dev.type == "cuda" if vectorize is None else vectorize,
        backend=backend,
    )
    advance = progress_factory(planned_units(ctx, names)) if progress_factory is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if results.get("preset", {}).get("name") not in (None, preset.name):
        results = {}
    t0 = time.perf_counter()
    results["preset"] = preset.to_dict()
    results["stand_in"] = {net: ctx.stand_in(net) for net in preset.nets}
    results["datasets"] = {
        net: {
            "name": ctx.dataset_name(net),
            "source": ctx.data(net).source,
            "num_train": ctx.data(net).num_train,
            "num_test": ctx.data(net).num_test,
        }
        for net in preset.nets
    }
    results.setdefault("experiments", {})
    results.setdefault("seconds", {})
    with count_measurements() as tally:
        for i, name in enumerate(names, 1):
            t = time.perf_counter()
            log.info("experiment %s", name)
            if advance is not None:  # labels say which experiment, n of m
                stage = f"[{i}/{len(names)} {name}]"
                ctx.progress = partial(_labelled, advance, stage)
                advance(0.0, f"{stage} starting")
            results["experiments"][name] = EXPERIMENTS[name](ctx)
            results["seconds"][name] = time.perf_counter() - t
            _save(path, results)  # keep what is done even if a later experiment fails
    run_seconds = results.setdefault("run_seconds", {})
    run_seconds.update(ctx.run_seconds)
    results["train_seconds"] = sum(run_seconds.values())
    env = environment(dev) | inputs_provenance(store, run_seconds, tally)
    results["environment"] = merge_environment(results.get("environment"), env)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["wall_seconds_last_call"] = time.perf_counter() - t0
    _save(path, results)
    return results


def _labelled(advance: Callable[[float, str], None], stage: str, units: float, label: str) -> None:
    advance(units, f"{stage} {label}")


def _save(path: Path, results: dict[str, Any]) -> None:
    from sharpminima.store import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=1, default=_default, allow_nan=True))


def _default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


RENDERERS = (
    "sharpminima.report",
    "sharpminima.report.study_figures",  # imported inside a function of study.report
    "sharpminima.study.noise_figures",  # imported inside a function of study.noise_report
    "sharpminima.study.noise_report",
    "sharpminima.study.report",
    "sharpminima.train.vectorized",  # trials trained as one computation (CUDA), maybe in another call
)
"""Modules counted in every ``code_files``: the report renderers, which run after the results
are saved, and training paths that another call for the same folder may have taken."""


def merge_environment(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """The environment of an output folder that several calls filled (experiments are kept).

    ``code_files`` is the union of the calls' lists, or absent when an earlier call did not
    record one (the published-results check then counts all of the code). Commits of earlier
    calls other than this one's are kept in ``earlier_code_versions``, so the check can tell
    that the folder mixes the output of several commits.
    """
    if not previous:
        return current
    env = dict(current)
    if "code_files" in previous:
        env["code_files"] = sorted(set(previous["code_files"]) | set(current.get("code_files", ())))
    else:
        env.pop("code_files", None)
    earlier = [*previous.get("earlier_code_versions", ()), previous.get("code_version")]
    earlier = sorted({v for v in earlier if v and v != current.get("code_version")})
    if earlier:
        env["earlier_code_versions"] = earlier
    return env


def environment(device: torch.device) -> dict[str, Any]:
    """Machine and versions, for the report."""
    import numpy
    import scipy

    from sharpminima import __version__
    from sharpminima.store.provenance import code_version, cpu_model, loaded_code_files

    # The reports are rendered after these results are saved: load their modules now, so
    # that ``code_files`` names every file that can make a published folder.
    for module in RENDERERS:
        importlib.import_module(module)

    env = {
        "sharpminima": __version__,
        "code_version": code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["code_files"] = loaded_code_files()
    return env
