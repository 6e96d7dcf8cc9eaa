"""Train every run of a grid, measure each final model, and correlate measures with the gap.

Everything goes through the run store: a run whose config is already done is loaded, not
trained, and a measurement already stored under the same run, kind and params is read, not
recomputed, so rerunning a study (or extending its grid) redoes nothing that is finished.

The generalization gaps of a run come from its last epoch (eval-mode BatchNorm, dropout
off, over its whole training subset and test set):

* loss gap: ``test_loss - train_loss`` (cross-entropy);
* error gap: ``test_error - train_error = train_acc - test_acc`` (percentage points).

A run enters the statistics only if it finished and its final training cross-entropy is
at most ``preset.loss_threshold`` (Jiang et al. 2020 train to 0.01: comparing models that
fit the training set to different degrees mostly ranks how well they fit). Runs left out
are counted in the results, and no landscape measure is computed for them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.data.base import Dataset
from sharpminima.errors import ConfigError
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.objective import flatten_params
from sharpminima.landscape.registry import DataSpec, Inputs, Request, cached_measure
from sharpminima.reproduce.runner import environment
from sharpminima.store.provenance import count_measurements, inputs_provenance
from sharpminima.study.correlation import correlate
from sharpminima.study.grid import GridPoint, StudyPreset
from sharpminima.study.measures import StudyMeasure, specs
from sharpminima.train import Run, train

log = logging.getLogger(__name__)

#: ``progress(units, label)``: advance the study's bar by ``units`` of work.
Progress = Callable[[float, str], None]

#: The two gaps every measure is ranked against.
GAPS = ("loss", "error")


def numeric_axes(points: list[GridPoint]) -> tuple[str, ...]:
    """Grid axes whose values are all numbers and that take at least two values."""
    if not points:
        return ()
    out = []
    for axis in points[0].hparams:
        values = [pt.hparams[axis] for pt in points]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(set(values)) >= 2 and axis != "seed":
            out.append(axis)
    return tuple(out)


def train_units(epochs: int, num_train: int) -> float:
    """Work of a training run in passes over 10,000 samples (evaluation included)."""
    return epochs * num_train * 1.3 / 10_000


def measure_units(spec: StudyMeasure, samples: int) -> float:
    """Work of one measurement in passes over 10,000 samples."""
    return spec.passes * samples / 10_000


def plan(preset: StudyPreset, num_train: int) -> tuple[list[GridPoint], list[StudyMeasure], float]:
    """The runs, the measures and the total work (for a progress bar) of a study.

    Args:
        preset: The study.
        num_train: Training samples available (before ``train_limit``).

    Returns:
        ``(points, measures, total_units)``.

    Raises:
        ConfigError: If the grid is empty or a batch size exceeds the training subset.
    """
    points = preset.points()
    n = min(num_train, preset.train_limit or num_train)
    too_big = sorted({pt.config.batch_size for pt in points if pt.config.batch_size > n})
    if too_big:
        raise ConfigError(
            f"batch size {too_big[0]} exceeds the {n} training samples; lower it or raise --train-limit"
        )
    measures = specs(preset, numeric_axes(points))
    samples = min(preset.measure_samples, n)
    total = sum(train_units(pt.config.epochs, n) for pt in points)
    total += len(points) * sum(measure_units(s, samples) for s in measures)
    return points, measures, total


def _measure(store: Any, run: Run, spec: StudyMeasure, data: DataSpec, build: Callable[[str], Inputs],
             hparams: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"value", "cost", "reused"}``: from the store, or computed and stored."""
    if not spec.measure:  # read from the run record: nothing to compute or cache
        value = run.final.get("train_loss", math.nan) if spec.field == "train_loss" else hparams[
            spec.field.removeprefix("hparam:")]
        return {"value": float(value), "cost": {}, "reused": False}
    request = Request.of(spec.measure, dataclasses.replace(data, bn_mode=spec.bn_mode), "final", spec.params)
    bn = request.data.bn_mode if request.data is not None else "eval"
    record = cached_measure(store, run.id, request, lambda: build(bn))
    cost = dict(record.cost)
    if "data_passes" in record.result and not cost.get("num_grad"):  # per-example gradients
        cost["num_grad"] = record.result["data_passes"]
    return {"value": record.value, "cost": cost, "reused": record.reused}


def run_study(
    preset: StudyPreset,
    *,
    store: Any = None,
    dataset: Dataset | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    backend: Any = None,
) -> dict[str, Any]:
    """Train (or reuse) every run of the grid, measure it and correlate measures with the gaps.

    Args:
        preset: What to train, measure and compute.
        store: A :class:`~sharpminima.store.Store` (None: nothing is cached; for tests).
        dataset: The data (loaded from ``preset.dataset`` if None); ``train_limit`` and
            ``test_limit`` are applied per run.
        device: Where to train and measure (default: CUDA if available, else CPU).
        progress: Called with units of work done (see :func:`plan` for the total).
        model_factory: Build the network instead of the registry (bring your own model).
        backend: Where the runs train (:func:`sharpminima.backends.get_backend`); None:
            here, one after another. A cluster backend trains every run of the grid first,
            in parallel, loading the data on its workers by the configs' dataset names
            (``dataset`` is then used for the measures only); the measures run here.

    Returns:
        JSON-friendly results: ``preset``, ``runs`` (one per grid point, with its gaps,
        whether it met the criterion and every measure's value and cost), ``excluded``
        counts, ``correlations`` (one per measure and gap) and ``costs`` per measure.

    Raises:
        ConfigError: For an invalid grid, preset or a batch size above the training set.
    """
    t_start = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dataset is None:
        from sharpminima.data import load

        dataset = load(preset.dataset)
    points, measures, _ = plan(preset, dataset.num_train)
    if backend is not None and backend.name != "local":
        if store is None or model_factory is not None:
            raise ConfigError(f"--backend {backend.name} needs a run store and a registered network "
                              "(or a module:function factory), not a model_factory object")

        def trained(run_id: str, status: str) -> None:
            if progress is not None:
                progress(0.0, f"run {run_id} {status} on {backend.name}")

        backend.train_many(store, [pt.config for pt in points], progress=trained)
    subset = dataset.subset(preset.train_limit, preset.test_limit)
    samples = min(preset.measure_samples, subset.num_train)
    x_meas = subset.x_train[:samples].to(dev)
    y_meas = subset.y_train[:samples].to(dev)
    num_train = subset.num_train
    data = DataSpec(split="train", num_samples=samples, chunk_size=preset.chunk_size, loss="cross_entropy")

    def advance(units: float, label: str) -> None:
        if progress is not None and units > 0:
            progress(units, label)

    runs: list[dict[str, Any]] = []
    with count_measurements() as tally:
        for i, pt in enumerate(points):
            label = ", ".join(f"{k}={v}" for k, v in pt.hparams.items())
            units = train_units(pt.config.epochs, num_train)
            steps = math.ceil(num_train / pt.config.batch_size) * pt.config.epochs
            done = 0.0

            def on_event(event: str, info: dict[str, Any], units: float = units, steps: int = steps,
                         label: str = label) -> None:
                nonlocal done
                if event == "start":
                    part = units * info["done_steps"] / max(1, info["total_steps"])
                elif event == "step":
                    part = units / max(1, steps)
                else:
                    return
                done += part
                advance(part, f"train {label}")

            t0 = time.perf_counter()
            run = train(pt.config, dataset=dataset, store=store, device=dev, progress=on_event,
                        model_factory=model_factory)
            advance(units - done, f"train {label}")
            final = run.final
            row: dict[str, Any] = {
                "index": i,
                "hparams": pt.hparams,
                "run_id": run.id,
                "status": run.status,
                "epochs": run.epochs,
                "train_seconds": run.seconds,
                "wall_seconds": time.perf_counter() - t0,
                **{k: final.get(k) for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
            }
            loss = final.get("train_loss")
            ok = run.status == "done" and loss is not None and math.isfinite(loss)
            row["converged"] = bool(ok and final["train_loss"] <= preset.loss_threshold)
            row["excluded"] = None if row["converged"] else (
                run.status if run.status != "done" else "train loss above threshold")
            if ok:
                row["gap_loss"] = final["test_loss"] - final["train_loss"]
                row["gap_error"] = final["train_acc"] - final["test_acc"]
            row["measures"] = {}
            if row["converged"]:
                x, x0 = flatten_params(run.model), run.initial_vector()

                def build(bn: str, run: Run = run, x: Tensor = x, x0: Tensor = x0) -> Inputs:
                    obj = ModelObjective(run.model, x_meas, y_meas, bn_mode=bn,  # type: ignore[arg-type]
                                         chunk_size=preset.chunk_size)
                    return Inputs(obj, x, x0=x0, model=run.model)

                for spec in measures:
                    row["measures"][spec.name] = _measure(store, run, spec, data, build, pt.hparams)
                    advance(measure_units(spec, samples), spec.name)
            else:
                advance(sum(measure_units(s, samples) for s in measures), f"skip {label}")
            runs.append(row)
            del run
    return {
        "kind": "correlation_study",
        "preset": preset.to_dict(),
        "measure_samples": samples,
        "num_train": num_train,
        "num_test": subset.num_test,
        "device": str(dev),
        "measures": [{"name": s.name, "family": s.family, "kind": s.kind, "params": s.params}
                     for s in measures],
        "runs": runs,
        "excluded": _excluded(runs),
        "correlations": correlations(runs, [s.name for s in measures], preset),
        "costs": costs(runs, [s.name for s in measures]),
        "seconds": time.perf_counter() - t_start,
        "environment": environment(dev) | inputs_provenance(store, [r["run_id"] for r in runs], tally),
    }


def _excluded(runs: list[dict[str, Any]]) -> dict[str, int]:
    out = {"total": len(runs), "included": sum(r["converged"] for r in runs)}
    for r in runs:
        if r["excluded"]:
            out[r["excluded"]] = out.get(r["excluded"], 0) + 1
    return out


def correlations(runs: list[dict[str, Any]], names: list[str], preset: StudyPreset) -> list[dict[str, Any]]:
    """Kendall, Spearman and granulated tau of every measure against both gaps (converged runs).

    Args:
        runs: The ``runs`` of :func:`run_study`'s results.
        names: Measure names.
        preset: Supplies ``num_bootstrap``, ``level`` and ``bootstrap_seed``.

    Returns:
        One :meth:`~sharpminima.study.correlation.Correlation.to_dict` per measure and gap.
    """
    used = [r for r in runs if r["converged"]]
    out = []
    for name in names:
        values = [r["measures"].get(name, {}).get("value", math.nan) for r in used]
        for gap in GAPS:
            c = correlate(values, [r[f"gap_{gap}"] for r in used], [r["hparams"] for r in used],
                          measure_name=name, gap_name=gap, num_bootstrap=preset.num_bootstrap,
                          level=preset.level, seed=preset.bootstrap_seed)
            out.append(c.to_dict())
    return out


def costs(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    """Mean cost per run of each measure: seconds, loss, gradient and HVP evaluations.

    ``grad_passes`` counts gradient-pass equivalents over the measure samples: a gradient
    1, a Hessian-vector product 2, a loss evaluation 1/3 (a forward pass).
    """
    out: dict[str, dict[str, float]] = {}
    for name in names:
        rows = [r["measures"][name]["cost"] for r in runs if name in r["measures"]]
        if not rows:
            continue
        mean = {k: sum(float(c.get(k, 0) or 0) for c in rows) / len(rows)
                for k in ("seconds", "num_loss", "num_grad", "num_hvp")}
        mean["grad_passes"] = mean["num_grad"] + 2 * mean["num_hvp"] + mean["num_loss"] / 3
        mean["runs"] = len(rows)
        out[name] = mean
    return out
