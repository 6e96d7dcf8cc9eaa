"""Relative flatness (Petzka et al., "Relative Flatness and Generalization", NeurIPS 2021).

For a layer with weight matrix ``W`` (``d x m``, row ``w_s`` the weights of unit ``s``; a
convolution's filters read as ``(out, in * k * k)``) and the Hessian ``H`` of the loss
with respect to ``W``, with blocks ``H_{s,s'} = d^2 L / (d w_s d w_{s'})`` (``m x m``)::

    kappa(W) = sum_{s, s'} <w_s, w_{s'}> tr(H_{s,s'})

It is invariant under the layer-wise and neuron-wise rescalings that make plain Hessian
measures arbitrary (Dinh et al. 2017), and Petzka et al. tie it to generalization through
a robustness argument on the layer's representation.

Two ways to compute it, one Hessian-vector product per probe or per column:

* ``method="hutchinson"`` (unbiased): with independent Rademacher vectors ``y, z`` in
  ``R^m``, the direction ``D = (W y) z^T`` gives ``E[vec(D)^T H vec(D)] = kappa``, because
  ``E[(W y)(W y)^T] = W W^T`` and ``E[z z^T] = I``. The mean over ``num_probes`` probes,
  with its standard error.
* ``method="exact"``: the layer's Hessian block column by column (``d * m`` products), then
  the double sum as written; for small layers and tests.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sharpminima.errors import ConfigError
from sharpminima.landscape.objective import as_objective, require_network
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, register_measure
from sharpminima.landscape.results import CostMeter, Result

#: Largest ``d * m`` for ``method="exact"`` (one Hessian-vector product per entry).
EXACT_LIMIT = 20_000


@dataclass(frozen=True)
class RelativeFlatnessResult(Result):
    """``kappa`` of one layer.

    Attributes:
        stderr: Standard error (Hutchinson; 0 for exact).
        layer: The weight's parameter name.
        shape: ``(d, m)`` as the weight is read.
        method: ``"hutchinson"`` or ``"exact"``.
        num_probes: Probes (or Hessian columns) used.
    """

    stderr: float = math.nan
    layer: str = ""
    shape: tuple[int, int] = (0, 0)
    method: str = ""
    num_probes: int = 0


def default_layer(model: nn.Module, names: list[str]) -> str:
    """The weight of the model's last linear (or convolution) layer among trainable ``names``.

    Raises:
        ConfigError: If there is none.
    """
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            key = f"{name}.weight" if name else "weight"
            if key in names:
                found = key
    if found is None:
        raise ConfigError("relative flatness needs a trainable linear or convolution weight; none was found")
    return found


def relative_flatness(
    loss: Any,
    x: Tensor,
    *,
    layer: str | None = None,
    method: Literal["hutchinson", "exact"] = "hutchinson",
    num_probes: int = 100,
    seed: int = 0,
) -> RelativeFlatnessResult:
    """Relative flatness ``kappa`` of one layer at ``x`` (see the module docstring).

    Args:
        loss: A network objective (its Hessian-vector products and parameter layout).
        x: The point ``(n,)``.
        layer: The weight's parameter name (``"net.13.weight"``, F1's last hidden linear
            layer) or its module's name (``"net.13"``); default: the last linear or
            convolution layer's weight.
        method: ``"hutchinson"`` or ``"exact"``.
        num_probes: Hutchinson probes (``>= 2``).
        seed: Seed of the probes.

    Returns:
        :class:`RelativeFlatnessResult`.

    Raises:
        ConfigError: For an unknown layer or method, a non-matrix weight, too few probes,
            or an exact computation over :data:`EXACT_LIMIT` entries.
    """
    obj = require_network(loss, "relative flatness")
    as_objective(obj, x)
    if method not in ("hutchinson", "exact"):
        raise ConfigError(f"method must be 'hutchinson' or 'exact', got {method!r}")
    if method == "hutchinson" and not (isinstance(num_probes, int) and num_probes >= 2):
        raise ConfigError(f"num_probes must be an integer >= 2, got {num_probes!r}")
    names = list(obj.names)
    name = default_layer(obj.model, names) if layer is None else layer
    if name not in names and f"{name}.weight" in names:
        name = f"{name}.weight"
    if name not in names:
        raise ConfigError(
            f"no trainable parameter {layer!r}; weights: "
            f"{', '.join(n for n in names if n.endswith('weight'))}"
        )
    index = names.index(name)
    shape = obj.shapes[index]
    if len(shape) < 2:
        raise ConfigError(f"relative flatness needs a weight matrix, {name} has shape {tuple(shape)}")
    start = sum(obj.numels[:index])
    d, m = int(shape[0]), int(math.prod(shape[1:]))
    x = x.detach().to(device=obj.device, dtype=obj.dtype)
    w = x[start : start + d * m].reshape(d, m)  # (d, m)
    products = obj.hvp_at(x)

    def quad(direction: Tensor) -> tuple[Tensor, Tensor]:
        """``(H v)`` restricted to the layer, for ``v`` = direction embedded at the layer."""
        v = torch.zeros_like(x)
        v[start : start + d * m] = direction.reshape(-1)
        return products(v)[start : start + d * m].reshape(d, m), direction

    t0 = time.perf_counter()
    with CostMeter(obj) as meter:
        if method == "hutchinson":
            gen = torch.Generator().manual_seed(int(seed))
            values = []
            for _ in range(num_probes):
                y = (torch.randint(0, 2, (m,), generator=gen, dtype=torch.float64) * 2 - 1).to(x)
                z = (torch.randint(0, 2, (m,), generator=gen, dtype=torch.float64) * 2 - 1).to(x)
                hd, dd = quad(torch.outer(w @ y, z))  # D = (W y) z^T, (d, m)
                values.append(float((hd.double() * dd.double()).sum()))
            value = statistics.fmean(values)
            stderr = statistics.stdev(values) / math.sqrt(len(values))
            used = num_probes
        else:
            if d * m > EXACT_LIMIT:
                raise ConfigError(
                    f"exact relative flatness takes d * m = {d * m} Hessian-vector products (limit "
                    f"{EXACT_LIMIT}); use method='hutchinson'"
                )
            gram = (w @ w.T).double()  # (d, d): <w_s, w_s'>
            total = 0.0
            for s_prime in range(d):
                for j in range(m):
                    e = torch.zeros(d, m, dtype=x.dtype, device=x.device)
                    e[s_prime, j] = 1.0
                    col, _ = quad(e)  # H[(s, j'), (s', j)] for all s, j'
                    total += float((gram[:, s_prime] * col[:, j].double()).sum())
            value, stderr, used = total, 0.0, d * m
    return RelativeFlatnessResult(
        value=value,
        settings={
            "measure": "relative_flatness",
            "layer": name,
            "method": method,
            "seconds": time.perf_counter() - t0,
            **obj.settings(),
        },
        cost=meter.cost,
        seed=seed if method == "hutchinson" else None,
        stderr=stderr,
        layer=name,
        shape=(d, m),
        method=method,
        num_probes=used,
    )


@dataclass(frozen=True)
class RelativeFlatnessParams(MeasureParams):
    """Parameters of ``relative_flatness`` (see :func:`relative_flatness`)."""

    layer: str | None = None
    method: Literal["hutchinson", "exact"] = "hutchinson"
    num_probes: int = 100
    seed: int = 0

    def validate(self) -> None:
        """At least two probes."""
        if self.num_probes < 2:
            raise ConfigError(f"num_probes must be at least 2, got {self.num_probes}")


def _relative_flatness(inputs: Inputs, p: RelativeFlatnessParams) -> RelativeFlatnessResult:
    return relative_flatness(
        inputs.objective, inputs.x, layer=p.layer, method=p.method, num_probes=p.num_probes, seed=p.seed
    )


register_measure(
    Measure(
        "relative_flatness",
        RelativeFlatnessParams,
        _relative_flatness,
        "Petzka et al.'s relative flatness of one layer: sum <w_s, w_s'> tr(H_ss') (rescaling-invariant)",
        needs=Needs(network=True),
        passes=lambda p: 2 * p.num_probes,
    )
)
