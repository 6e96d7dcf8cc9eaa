"""Measure a live model on held data without disturbing its training, and log the results.

:func:`measure_model` is what the training callbacks call: registered measures
(:mod:`sharpminima.landscape.registry`) of the model's current weights on a fixed data
source. It leaves the training state exactly as it was:

* weights and buffers: the model is evaluated functionally at a copy of its parameters, and
  BatchNorm never updates its running statistics (``bn_mode`` switches tracking off in
  ``"batch"`` mode and uses them read-only in ``"eval"`` mode);
* ``.grad`` of every parameter: gradients are taken with respect to the copy, never
  accumulated into the module;
* train/eval flags: restored module by module;
* the random state: the CPU and CUDA generators are forked for the duration;
* the optimizer: never touched.

:func:`log_results` writes results to whatever logger a training setup has.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.model_objective import ModelObjective
from sharpminima.landscape.objective import flatten_params
from sharpminima.landscape.registry import Inputs as MeasureInputs
from sharpminima.landscape.registry import MeasureParams, get_measure, run
from sharpminima.landscape.results import Result

log = logging.getLogger(__name__)

#: A measure to take: its name, or ``(name, {parameter: value})``.
MeasureSpec = str | tuple[str, Mapping[str, Any]]


def _token(value: Any) -> str:
    """A value as a metric-name token (letters, digits, ``_``, ``-``, ``.`` only)."""
    text = "-".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


def _requests(measures: Sequence[MeasureSpec]) -> list[tuple[str, str, MeasureParams]]:
    """``(label, measure name, params)`` per spec, validated up front.

    A label is the measure's name, with its given parameters appended
    (``hessian_eigenvalues.k_2``), in characters every logger accepts.

    Raises:
        ConfigError: For an unknown measure or parameter, or a repeated label.
    """
    out = []
    for spec in measures:
        name, values = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        measure = get_measure(name)
        params = measure.make_params(values)
        label = measure.name + "".join(f".{k}_{_token(v)}" for k, v in values.items())
        out.append((label, measure.name, params))
    labels = [label for label, _, _ in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"measures are named twice: {labels}")
    return out


def measure_model(
    model: nn.Module,
    data: Any,
    measures: Sequence[MeasureSpec] = ("keskar_sharpness",),
    *,
    loss: Any = None,
    bn_mode: str = "eval",
    chunk_size: int = 1000,
    max_batches: int | None = None,
    x0: torch.Tensor | None = None,
) -> dict[str, Result]:
    """Registered measures of ``model``'s current weights on ``data``, leaving training as it was.

    Args:
        model: The network being trained (any ``nn.Module``, a LightningModule included).
        data: Held data: a DataLoader of fixed batches, a list of batches, or tensors
            ``(inputs, targets)``; a shuffling loader is refused (pin it with
            :func:`~sharpminima.data.sources.pin_batches`).
        measures: Names (``"hessian_eigenvalues"``) or ``(name, params)`` pairs.
        loss: The loss (see :class:`~sharpminima.landscape.model_objective.ModelObjective`).
        bn_mode: ``"eval"`` (running statistics; the default mid-training) or ``"batch"``.
        chunk_size: Samples per forward pass of tensor data.
        max_batches: Use only the first batches.
        x0: Initial weights, for measures of distance from the start.

    Returns:
        Label (the measure's name, with its parameters when given) -> result.

    Raises:
        ConfigError: For an unknown measure or parameter, or bad data.
    """
    requests = _requests(measures)
    pair = isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
    inputs, targets = data if pair else (data, None)
    objective = ModelObjective(
        model,
        inputs,
        targets,
        loss=loss,
        bn_mode=bn_mode,  # type: ignore[arg-type]
        chunk_size=chunk_size,
        max_batches=max_batches,
    )
    devices = (
        [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    )
    out: dict[str, Result] = {}
    with torch.random.fork_rng(devices=devices):
        x = flatten_params(model)
        for label, name, params in requests:
            measure = get_measure(name)
            fixed = measure.bn_mode(params)
            obj = objective if fixed is None or fixed == bn_mode else objective.with_bn_mode(fixed)  # type: ignore[arg-type]
            out[label] = run(measure, MeasureInputs(obj, x, x0=x0, model=model), params)
    return out


def metrics_of(results: Mapping[str, Result], prefix: str = "sharpminima/") -> dict[str, float]:
    """Flat ``{prefix + label: value}`` (and ``..._stderr`` where there is one), finite only."""
    out: dict[str, float] = {}
    for label, result in results.items():
        out[prefix + label] = float(result.value)
        stderr = getattr(result, "stderr", None)
        if isinstance(stderr, float) and math.isfinite(stderr):
            out[prefix + label + "_stderr"] = stderr
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_results(
    results: Mapping[str, Result] | Result,
    logger: Any,
    step: int | None = None,
    *,
    prefix: str = "sharpminima/",
    name: str = "measure",
) -> dict[str, float]:
    """Log results to TensorBoard, Weights & Biases, MLflow, a Lightning logger or a function.

    ``logger`` is recognised by what it does:

    * a TensorBoard ``SummaryWriter`` (``add_scalar``): one scalar per metric at ``step``;
    * a Weights & Biases run (``log`` and ``summary``): ``run.log(metrics, step=step)``;
    * the ``mlflow`` module or an object with ``log_metrics(dict, step=)`` that is not a
      Lightning logger: ``log_metrics(metrics, step=step)`` (MLflow's fluent API: the
      active run);
    * a Lightning logger (``log_metrics(metrics, step)`` with ``save``): the same;
    * a callable ``fn(metrics, step)``.

    Args:
        results: Label -> result, or one result (labelled ``name``).
        logger: Where to log.
        step: The step (or epoch) to log at.
        prefix: Prefix of every metric name.
        name: The label of a single result.

    Returns:
        The metrics logged.

    Raises:
        ConfigError: If ``logger`` is none of these.
    """
    if isinstance(results, Result):
        results = {name: results}
    metrics = metrics_of(results, prefix)
    if hasattr(logger, "add_scalar"):
        for key, value in metrics.items():
            logger.add_scalar(key, value, global_step=step)
        flush = getattr(logger, "flush", None)
        if callable(flush):
            flush()
    elif hasattr(logger, "log") and hasattr(logger, "summary"):
        logger.log(metrics, step=step, commit=True)
    elif hasattr(logger, "log_metrics"):
        logger.log_metrics(metrics, step=step)
    elif callable(logger):
        logger(metrics, step)
    else:
        raise ConfigError(
            f"cannot log to a {type(logger).__name__}: give a SummaryWriter, a wandb run, mlflow, a "
            "Lightning logger or a function fn(metrics, step)"
        )
    return metrics


def every(n: int) -> Callable[[int], bool]:
    """``epoch -> bool``: True every ``n``-th epoch (1-based).

    Raises:
        ConfigError: For ``n < 1``.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ConfigError(f"every_n_epochs must be a positive integer, got {n!r}")
    return lambda epoch: epoch % n == 0


class MeasureSchedule:
    """What the training callbacks share: the held data, the measures, when, and the history.

    A framework callback (Lightning, Hugging Face) inherits it beside the framework's base
    class, calls :meth:`_schedule` from its constructor and :meth:`_take` when a
    measurement is due; it only decides when and where to log.
    """

    history: list[tuple[Any, dict[str, Result]]]

    def _schedule(
        self, data: Any, measures: Sequence[MeasureSpec], every_n_epochs: int, at_end: bool, loss: Any,
        bn_mode: str, prefix: str,
    ) -> None:
        self.data, self.measures, self.loss, self.bn_mode, self.prefix = (
            data, list(measures), loss, bn_mode, prefix,
        )
        self.due = every(every_n_epochs) if every_n_epochs else (lambda epoch: False)
        self.at_end = at_end
        self.history = []

    def _take(self, model: nn.Module, epoch: Any) -> dict[str, Result]:
        """Measure ``model`` now and record the results under ``epoch``."""
        results = measure_model(model, self.data, self.measures, loss=self.loss, bn_mode=self.bn_mode)
        self.history.append((epoch, results))
        return results

    def _end_due(self, epoch: Any) -> bool:
        """Whether to measure at the end: asked to, and ``epoch`` was not just measured."""
        return self.at_end and not (self.history and self.history[-1][0] == epoch)
