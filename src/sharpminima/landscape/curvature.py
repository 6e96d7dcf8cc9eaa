"""Curvature on parts of parameter space: subspace Ritz values and per-layer Hessian blocks.

Keskar et al. (2017, Sec. 2.2.2) remark that their sharpness metric in a random subspace
``x + A y`` tracks the Ritz values of the Hessian projected on ``A``'s column space, i.e. the
eigenvalues of ``Q^T H Q`` for an orthonormal basis ``Q`` of ``range(A)``;
:func:`subspace_ritz_values` computes them. :func:`layer_eigenvalues` and
:func:`layer_traces` measure the diagonal blocks of the Hessian (or of any operator, such
as the Gauss-Newton matrix) that belong to each layer, as users of curvature tools ask for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sharpminima.deprecation import renamed
from sharpminima.errors import ConfigError
from sharpminima.landscape.eigen import EigenMethod, EigenResult, top_eigenvalues
from sharpminima.landscape.objective import LossFn, Objective, as_objective
from sharpminima.landscape.operators import (
    BlockOperator,
    Operator,
    OperatorMeter,
    parameter_groups,
    resolve_operator,
)
from sharpminima.landscape.registry import Inputs, Measure, MeasureParams, Needs, positive, register_measure
from sharpminima.landscape.results import Cost, Result
from sharpminima.landscape.trace import Distribution, TraceResult, hutchinson


@dataclass(frozen=True)
class RitzResult(Result):
    """Ritz values of a symmetric operator on a subspace.

    Attributes:
        value: The largest Ritz value.
        values: All ``p`` Ritz values (eigenvalues of ``Q^T H Q``), largest first.
        subspace_dim: ``p``, the number of columns of ``A``.
        num_matvecs: Products with the operator (``p``).

    """

    values: tuple[float, ...] = ()
    subspace_dim: int = 0
    num_matvecs: int = 0


def subspace_ritz_values(
    loss: LossFn | Objective,
    x: Tensor,
    A: Tensor,
    *,
    operator: Tensor | Operator | None = None,
) -> RitzResult:
    """Eigenvalues of the Hessian projected on the column space of ``A``.

    ``Q`` is the orthonormal factor of the reduced QR decomposition ``A = QR`` (no
    pseudo-inverse is formed); the result is ``eig(Q^T H Q)``, computed with ``p`` products
    ``H q_j``, symmetrised and solved in float64. The Ritz values interlace the Hessian's
    eigenvalues: the largest is at most ``lambda_max(H)``.

    Args:
        loss: A callable of the flat parameter vector, or an Objective.
        x: The point, shape ``(n,)``.
        A: Subspace matrix ``(n, p)`` with linearly independent columns, ``p <= n``
            (e.g. Keskar et al.'s random ``n x 100`` matrix).
        operator: Project this operator instead of the Hessian.

    Returns:
        :class:`RitzResult`, ``value`` = the largest Ritz value.

    Raises:
        ConfigError: If ``A`` is not ``(n, p)`` with ``1 <= p <= n`` or its columns are
            linearly dependent (to round-off).

    """
    op = resolve_operator(loss, x, operator)
    n = op.shape[0]
    if A.ndim != 2 or A.shape[0] != n or not 1 <= A.shape[1] <= n:
        raise ConfigError(
            f"subspace matrix must have shape (n, p) with n={n} and 1 <= p <= n, "
            f"got {tuple(A.shape)}"
        )
    p = int(A.shape[1])
    with OperatorMeter(op) as meter:
        q, r = torch.linalg.qr(A.to(dtype=op.dtype, device=op.device), mode="reduced")  # (n, p)
        diag = r.diagonal().abs()
        if float(diag.min()) <= n * torch.finfo(op.dtype).eps * float(diag.max()):
            raise ConfigError(
                "the columns of the subspace matrix are linearly dependent; draw A again or "
                "use fewer columns"
            )
        hq = op @ q  # (n, p)
        projected = (q.T @ hq).double().cpu()  # (p, p)
        projected = (projected + projected.T) / 2
        values = np.linalg.eigvalsh(projected.numpy())[::-1]
    return RitzResult(
        value=float(values[0]),
        values=tuple(float(v) for v in values),
        subspace_dim=p,
        num_matvecs=meter.num_matvecs,
        settings={"method": "ritz", "subspace_dim": p, **op.settings()},
        cost=meter.cost,
        converged=True,
        seed=None,
    )


def _blocks(
    loss: LossFn | Objective,
    x: Tensor,
    groups: dict[str, Tensor] | None,
    operator: Tensor | Operator | None,
) -> dict[str, BlockOperator]:
    objective = as_objective(loss, x)
    if groups is None:
        groups = parameter_groups(objective)
    full = resolve_operator(objective, x, operator)
    return {name: BlockOperator(full, idx, name=name) for name, idx in groups.items()}


def layer_eigenvalues(
    loss: LossFn | Objective,
    x: Tensor,
    k: int = 1,
    *,
    groups: dict[str, Tensor] | None = None,
    method: EigenMethod = "lanczos",
    tol: float = 1e-3,
    max_iters: int | None = None,
    seed: int = 0,
    operator: Tensor | Operator | None = None,
) -> dict[str, EigenResult]:
    """Top ``k`` eigenvalues of each layer's diagonal block of the Hessian.

    The block of group ``g`` is ``H[idx_g, idx_g]``: the curvature of the loss when only
    that layer's parameters move. By default groups are modules, as
    :func:`~sharpminima.landscape.operators.parameter_groups` makes them (``"net.0"`` holds
    ``net.0.weight`` and ``net.0.bias``; BatchNorm layers are their own groups). Each block
    product costs one full Hessian-vector product.

    Args:
        loss: A network objective, or any loss together with ``groups``.
        x: The point, shape ``(n,)``.
        k: Eigenvalues per block (at most the block's size).
        groups: Name -> 1-D index tensor into ``x``; default: by module.
        method: ``"lanczos"``, ``"block-lanczos"``, ``"arpack"`` or ``"power"``.
        tol: Relative residual tolerance.
        max_iters: As in :func:`~sharpminima.landscape.eigen.hessian_eigenvalues`.
        seed: Seed of the start vectors (the same for every block).
        operator: Cut the blocks from this operator instead of the Hessian (e.g. the GGN).

    Returns:
        Group name -> :class:`EigenResult` (settings name the block).

    Raises:
        ConfigError: If ``groups`` is None and ``loss`` is not a network objective, for a bad
            block, or as the eigenvalue method does.

    """
    out: dict[str, EigenResult] = {}
    for name, block in _blocks(loss, x, groups, operator).items():
        out[name] = top_eigenvalues(
            block, k, method=method, tol=tol, max_iters=max_iters, seed=seed
        )
    return out


@renamed(samples="num_probes")
def layer_traces(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    groups: dict[str, Tensor] | None = None,
    num_probes: int = 100,
    seed: int = 0,
    tol: float | None = None,
    distribution: Distribution = "rademacher",
    operator: Tensor | Operator | None = None,
) -> dict[str, TraceResult]:
    """Hutchinson estimate of the trace of each layer's diagonal Hessian block.

    The traces of all blocks sum to ``tr(H)``. Groups as in :func:`layer_eigenvalues`; each
    probe costs one full Hessian-vector product per block.

    Args:
        loss: A network objective, or any loss together with ``groups``.
        x: The point, shape ``(n,)``.
        groups: Name -> 1-D index tensor into ``x``; default: by module.
        num_probes: Most probes per block.
        seed: Seed of the probes (the same for every block).
        tol: Early stop per block once ``stderr <= tol * |value|``.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        operator: Cut the blocks from this operator instead of the Hessian.

    Returns:
        Group name -> :class:`TraceResult`.

    Raises:
        ConfigError: If ``groups`` is None and ``loss`` is not a network objective, for a bad
            block, or as :func:`~sharpminima.landscape.trace.hutchinson` does.

    """
    out: dict[str, TraceResult] = {}
    for name, block in _blocks(loss, x, groups, operator).items():
        out[name] = hutchinson(
            block, num_probes=num_probes, seed=seed, tol=tol, distribution=distribution
        )
    return out



# -------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class LayerwiseResult(Result):
    """A per-layer measure: ``value`` is the largest layer's value.

    Attributes:
        layers: Layer (module) name -> that block's result record.
    """

    layers: dict[str, Any] = field(default_factory=dict)


def _layerwise(results: dict[str, Result], settings: dict[str, Any]) -> LayerwiseResult:
    costs = [r.cost for r in results.values()]
    total = Cost(sum(c.num_loss for c in costs), sum(c.num_grad for c in costs),
                 sum(c.num_hvp for c in costs), sum(c.seconds for c in costs))
    return LayerwiseResult(value=max(r.value for r in results.values()), settings=settings, cost=total,
                           layers={name: r.to_record() for name, r in results.items()})


@dataclass(frozen=True)
class RitzParams(MeasureParams):
    """Parameters of ``subspace_ritz_values``: a random subspace of ``p`` columns."""

    p: int = 100
    seed: int = 0
    distribution: Literal["uniform", "gaussian", "uniform-raw"] = "uniform"

    def validate(self) -> None:
        """P >= 1."""
        positive("p", self.p, integer=True)


@dataclass(frozen=True)
class LayerEigenParams(MeasureParams):
    """Parameters of ``layer_eigenvalues``."""

    k: int = 1
    method: EigenMethod = "lanczos"
    tol: float = 1e-3
    max_iters: int | None = None
    seed: int = 0

    def validate(self) -> None:
        """K >= 1, tol > 0."""
        positive("k", self.k, integer=True)
        positive("tol", self.tol)


@dataclass(frozen=True)
class LayerTraceParams(MeasureParams):
    """Parameters of ``layer_traces``."""

    num_probes: int = 100
    seed: int = 0

    def validate(self) -> None:
        """At least two probes."""
        if self.num_probes < 2:
            raise ConfigError(f"num_probes must be at least 2, got {self.num_probes}")


def _ritz(inputs: Inputs, p: RitzParams) -> RitzResult:
    from sharpminima.landscape.subspace import drawn_subspace

    obj = inputs.objective
    a = drawn_subspace(obj.dim, p.p, p.seed, p.distribution, obj.dtype, obj.device)
    return subspace_ritz_values(obj, inputs.x, a)


def _layer_eigen(inputs: Inputs, p: LayerEigenParams) -> LayerwiseResult:
    res = layer_eigenvalues(inputs.objective, inputs.x, p.k, method=p.method, tol=p.tol,
                            max_iters=p.max_iters, seed=p.seed)
    return _layerwise(res, {"measure": "layer_eigenvalues", "k": p.k})  # type: ignore[arg-type]


def _layer_trace(inputs: Inputs, p: LayerTraceParams) -> LayerwiseResult:
    res = layer_traces(inputs.objective, inputs.x, num_probes=p.num_probes, seed=p.seed)
    return _layerwise(res, {"measure": "layer_traces", "num_probes": p.num_probes})  # type: ignore[arg-type]


register_measure(Measure(
    "subspace_ritz_values", RitzParams, _ritz,
    "Ritz values of the Hessian on a random p-dimensional subspace (p Hessian-vector products)",
    aliases=("ritz",), passes=lambda p: 2 * p.p,
))
register_measure(Measure(
    "layer_eigenvalues", LayerEigenParams, _layer_eigen,
    "Top eigenvalues of each layer's diagonal Hessian block (value: the largest)",
    aliases=("layer-hessian",), needs=Needs(network=True), passes=lambda p: 200.0,
))
register_measure(Measure(
    "layer_traces", LayerTraceParams, _layer_trace,
    "Hutchinson trace of each layer's diagonal Hessian block (value: the largest)",
    aliases=("layer-trace",), needs=Needs(network=True), passes=lambda p: 10 * p.num_probes,
))
