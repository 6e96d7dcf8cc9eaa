"""Curvature on parts of parameter space: subspace Ritz values and per-layer Hessian blocks.

Keskar et al. (2017, Sec. 2.2.2) remark that their sharpness metric in a random subspace
``x + A y`` tracks the Ritz values of the Hessian projected on ``A``'s column space, i.e. the
eigenvalues of ``Q^T H Q`` for an orthonormal basis ``Q`` of ``range(A)``;
:func:`subspace_ritz_values` computes them. :func:`layer_eigenvalues` and
:func:`layer_traces` measure the diagonal blocks of the Hessian (or of any operator, such
as the Gauss-Newton matrix) that belong to each layer, as users of curvature tools ask for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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
from sharpminima.landscape.results import Result
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
        loss: A ModelObjective, or any loss together with ``groups``.
        x: The point, shape ``(n,)``.
        k: Eigenvalues per block (at most the block's size).
        groups: Name -> 1-D index tensor into ``x``; default: by module.
        method: ``"lanczos"``, ``"arpack"`` or ``"power"``.
        tol: Relative residual tolerance.
        max_iters: As in :func:`~sharpminima.landscape.eigen.hessian_eigenvalues`.
        seed: Seed of the start vectors (the same for every block).
        operator: Cut the blocks from this operator instead of the Hessian (e.g. the GGN).

    Returns:
        Group name -> :class:`EigenResult` (settings name the block).

    Raises:
        ConfigError: If ``groups`` is None and ``loss`` is not a ModelObjective, for a bad
            block, or as the eigenvalue method does.

    """
    out: dict[str, EigenResult] = {}
    for name, block in _blocks(loss, x, groups, operator).items():
        out[name] = top_eigenvalues(
            block, k, method=method, tol=tol, max_iters=max_iters, seed=seed
        )
    return out


def layer_traces(
    loss: LossFn | Objective,
    x: Tensor,
    *,
    groups: dict[str, Tensor] | None = None,
    samples: int = 100,
    seed: int = 0,
    tol: float | None = None,
    distribution: Distribution = "rademacher",
    operator: Tensor | Operator | None = None,
) -> dict[str, TraceResult]:
    """Hutchinson estimate of the trace of each layer's diagonal Hessian block.

    The traces of all blocks sum to ``tr(H)``. Groups as in :func:`layer_eigenvalues`; each
    probe costs one full Hessian-vector product per block.

    Args:
        loss: A ModelObjective, or any loss together with ``groups``.
        x: The point, shape ``(n,)``.
        groups: Name -> 1-D index tensor into ``x``; default: by module.
        samples: Most probes per block.
        seed: Seed of the probes (the same for every block).
        tol: Early stop per block once ``stderr <= tol * |value|``.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        operator: Cut the blocks from this operator instead of the Hessian.

    Returns:
        Group name -> :class:`TraceResult`.

    Raises:
        ConfigError: If ``groups`` is None and ``loss`` is not a ModelObjective, for a bad
            block, or as :func:`~sharpminima.landscape.trace.hutchinson` does.

    """
    out: dict[str, TraceResult] = {}
    for name, block in _blocks(loss, x, groups, operator).items():
        out[name] = hutchinson(
            block, samples=samples, seed=seed, tol=tol, distribution=distribution
        )
    return out

