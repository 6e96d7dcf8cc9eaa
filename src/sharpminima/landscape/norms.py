"""Distances and norms of flat parameter vectors, in total and per layer.

:func:`weight_norms`, :func:`parameter_distance`, :func:`distance_ratio` (Keskar et
al.'s ``||x_SB - x0|| / ||x_LB - x0||``) and :func:`log_prod_norms` (Jiang et al.'s
norm-product baselines).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, register_measure
from sharpminima.landscape.results import Cost, Result

# ---------------------------------------------------------------------------------------
# Distances and norms
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormResult(Result):
    """A Euclidean norm of a flat vector, in total and per layer.

    Attributes:
        value: The total norm.
        relative: ``value`` over the reference norm (``||x0||`` for a distance; NaN for a
            plain norm).
        per_layer: Norm of each named parameter's block (empty without a layout).
    """

    relative: float = math.nan
    per_layer: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DistanceRatioResult(Result):
    """``||x_a - x0|| / ||x_b - x0||`` (Keskar et al.: ``||x_SB - x0|| / ||x_LB - x0||``).

    Attributes:
        value: The ratio.
        distance_a: ``||x_a - x0||``.
        distance_b: ``||x_b - x0||``.
    """

    distance_a: float = math.nan
    distance_b: float = math.nan


#: Names and sizes of the blocks of a flat vector: a network objective (its
#: ``parameter_layout()``), the model, or ``(name, numel)`` pairs.
Layout = Any


def _layout(layout: Layout | None, n: int) -> list[tuple[str, int]]:
    if layout is None:
        return []
    described = getattr(layout, "parameter_layout", None)
    if callable(described):
        pairs = [(str(k), int(v)) for k, v in described()]
    elif isinstance(layout, nn.Module):
        pairs = [(k, p.numel()) for k, p in layout.named_parameters() if p.requires_grad]
    else:
        pairs = [(str(k), int(v)) for k, v in layout]
    if sum(v for _, v in pairs) != n:
        raise ConfigError(
            f"the layout covers {sum(v for _, v in pairs)} parameters but the vector has {n}"
        )
    return pairs


def _per_layer(v: Tensor, pairs: list[tuple[str, int]]) -> dict[str, float]:
    if not pairs:
        return {}
    blocks = torch.split(v, [k for _, k in pairs])
    return {name: float(b.double().norm()) for (name, _), b in zip(pairs, blocks, strict=True)}


def _check_vectors(*vs: Tensor) -> None:
    if any(v.ndim != 1 for v in vs) or len({v.numel() for v in vs}) != 1:
        raise ConfigError(
            "parameter vectors must be 1-D and of equal length, got shapes "
            f"{[tuple(v.shape) for v in vs]}"
        )


def weight_norms(x: Tensor, layout: Layout | None = None) -> NormResult:
    """``||x||_2`` in total and per layer.

    Args:
        x: Flat parameter vector ``(n,)``.
        layout: Names and sizes of the blocks of ``x``: a network objective, the model, or a
            sequence of ``(name, numel)``; ``None`` for the total only.

    Returns:
        :class:`NormResult` (``relative`` is NaN).

    Raises:
        ConfigError: If ``x`` is not 1-D or the layout does not cover it.
    """
    _check_vectors(x)
    pairs = _layout(layout, x.numel())
    return NormResult(value=float(x.detach().double().norm()), settings={"norm": "l2"},
                      per_layer=_per_layer(x.detach(), pairs))


def parameter_distance(x: Tensor, x0: Tensor, layout: Layout | None = None) -> NormResult:
    """``||x - x0||_2`` in total and per layer, and relative to ``||x0||``.

    Args:
        x: Flat parameter vector ``(n,)``.
        x0: Reference vector ``(n,)`` (e.g. the initial weights).
        layout: As in :func:`weight_norms`.

    Returns:
        :class:`NormResult` with ``relative = ||x - x0|| / ||x0||``.

    Raises:
        ConfigError: If the vectors are not 1-D of equal length or the layout does not fit.
    """
    _check_vectors(x, x0)
    pairs = _layout(layout, x.numel())
    d = x.detach().double() - x0.detach().double()
    dist = float(d.norm())
    ref = float(x0.detach().double().norm())
    return NormResult(value=dist, settings={"norm": "l2"},
                      relative=dist / ref if ref > 0 else math.inf,
                      per_layer=_per_layer(d, pairs))


def distance_ratio(x_a: Tensor, x_b: Tensor, x0: Tensor) -> DistanceRatioResult:
    """``||x_a - x0|| / ||x_b - x0||``; Keskar et al. report 3 to 10 for ``(x_SB, x_LB)``.

    Args:
        x_a: First endpoint (the paper: small-batch solution).
        x_b: Second endpoint (the paper: large-batch solution).
        x0: Common starting point.

    Returns:
        :class:`DistanceRatioResult`.

    Raises:
        ConfigError: If the vectors are not 1-D of equal length.
    """
    _check_vectors(x_a, x_b, x0)
    da = float((x_a.detach().double() - x0.detach().double()).norm())
    db = float((x_b.detach().double() - x0.detach().double()).norm())
    return DistanceRatioResult(value=da / db if db > 0 else math.inf, settings={"norm": "l2"},
                               distance_a=da, distance_b=db)


# ------------------------------------------------------------------- norm-product baselines
def log_prod_norms(model: nn.Module, x: Tensor | None = None, layout: Layout | None = None,
                   ord_: str | int = "fro") -> NormResult:
    """``sum_l log ||W_l||^2`` over the weight matrices of linear and convolution layers.

    Jiang et al. ("Fantastic Generalization Measures and Where to Find Them", ICLR 2020):
    the "log product of Frobenius norms" (``ord_="fro"``) and of spectral norms
    (``ord_=2``) baselines; a convolution's weight is read as ``(out, in * k * k)``;
    biases and BatchNorm scales are left out.

    Args:
        model: The network (its layer types; and its weights when ``x`` is None).
        x: Flat parameters to read the weights from instead (needs ``layout``).
        layout: A network objective with ``unflatten`` (names of ``x``'s blocks).
        ord_: ``"fro"`` or ``2``.

    Returns:
        :class:`NormResult` with the per-layer norms in ``per_layer``.

    Raises:
        ConfigError: If ``x`` is given without a layout that can unflatten it.
    """
    t0 = time.perf_counter()
    named = None
    if x is not None:
        unflatten = getattr(layout, "unflatten", None)
        if not callable(unflatten):
            raise ConfigError("reading weights from a flat vector needs a network objective as layout")
        named = unflatten(x)
    norms: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            key = f"{name}.weight" if name else "weight"
            w = named[key] if named is not None and key in named else module.weight
            w = w.detach().reshape(w.shape[0], -1).double()
            norms[key] = float(torch.linalg.matrix_norm(w, ord=ord_))  # type: ignore[arg-type]
    value = float(sum(2 * math.log(v) for v in norms.values() if v > 0))
    return NormResult(value=value, settings={"norm": f"log product of {ord_} norms squared",
                                             "num_layers": len(norms)},
                      cost=Cost(seconds=time.perf_counter() - t0), per_layer=norms)


# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class NoParams(MeasureParams):
    """A measure without parameters."""


def _layout_of(inputs: Inputs) -> Layout | None:
    return inputs.objective if inputs.objective is not None else inputs.model


def _model_of(inputs: Inputs) -> nn.Module:
    model = inputs.model if inputs.model is not None else getattr(inputs.objective, "model", None)
    if model is None:
        raise ConfigError("this measure reads the network's layers: give the model or a network objective")
    return model


def _log_prod(ord_: str | int) -> Any:
    def compute(inputs: Inputs, p: NoParams) -> NormResult:
        layout = inputs.objective if callable(getattr(inputs.objective, "unflatten", None)) else None
        return log_prod_norms(_model_of(inputs), inputs.x if layout is not None else None, layout, ord_)

    return compute


register_measure(Measure(
    "weight_norm", NoParams, lambda inputs, p: weight_norms(inputs.x, _layout_of(inputs)),
    "Euclidean norm of the weights, in total and per layer",
    aliases=("weight-norm",), needs=Needs(data=False), passes=lambda p: 0.0,
))
register_measure(Measure(
    "distance_from_init", NoParams,
    lambda inputs, p: parameter_distance(inputs.x, inputs.x0, _layout_of(inputs)),  # type: ignore[arg-type]
    "Euclidean distance from the initial weights, in total and per layer",
    aliases=("distance",), needs=Needs(data=False, initial=True), passes=lambda p: 0.0,
))
register_measure(Measure(
    "log_prod_frobenius", NoParams, _log_prod("fro"),
    "sum over layers of log ||W||_F^2 (Jiang et al. 2020's norm-product baseline)",
    needs=Needs(data=False), passes=lambda p: 0.0,
))
register_measure(Measure(
    "log_prod_spectral", NoParams, _log_prod(2),
    "sum over layers of log ||W||_2^2 (spectral norms)",
    needs=Needs(data=False), passes=lambda p: 0.0,
))
