"""Random subspaces for Metric 2.1 in a ``p``-dimensional subspace, and ``A^+ x`` without a pseudo-inverse.

Keskar et al. measure sharpness also in a random subspace ``x + A y`` (``A`` of ``p``
columns). :func:`random_subspace` draws ``A`` (the distribution the paper leaves open is a
choice, see its docstring); :func:`subspace_coordinates` computes ``A^+ x`` by corrected
semi-normal equations, in about a second for F1's 1.46M x 100 matrix where a dense
pseudo-inverse takes ~37 s on two CPU cores; :func:`drawn_subspace` remembers the last
matrix drawn, so measuring many runs in one subspace draws it once.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sharpminima.errors import ConfigError

SubspaceDistribution = Literal["uniform", "gaussian", "uniform-raw"]
DISTRIBUTIONS = ("uniform", "gaussian", "uniform-raw")




def random_subspace(
    n: int,
    p: int = 100,
    *,
    seed: int,
    distribution: SubspaceDistribution = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw a random ``n x p`` matrix (unit-norm columns by default) for the subspace metric.

    Keskar et al. do not give the distribution. ``"uniform"``: entries ``U[0, 1)``, then
    each column scaled to unit norm (what public reimplementations use; the columns share a
    large common component along the all-ones direction, ``cond(A) ~ sqrt(3p)``).
    ``"gaussian"``: entries ``N(0, 1)``, each column scaled to unit norm (nearly
    orthonormal columns). ``"uniform-raw"``: entries ``U[0, 1)`` left unscaled (columns of
    norm about ``sqrt(n/3)``), the literal reading of the paper's "random matrix" with no
    normalisation stated; on F1 it moves every weight by ~0.05 and saturates the metric
    (about 250 for both SB and LB), where unit-norm columns give values near 0; neither
    matches the paper's Table 4. Drawn on the CPU from
    ``torch.Generator().manual_seed(seed)`` and then moved, so the matrix does not depend
    on the device.

    Args:
        n: Number of parameters (rows).
        p: Subspace dimension (columns), ``1 <= p <= n``.
        seed: Random seed.
        distribution: ``"uniform"``, ``"gaussian"`` or ``"uniform-raw"``.
        dtype: Floating dtype of the result (the objective's).
        device: Device of the result.

    Returns:
        ``A`` of shape ``(n, p)``.

    Raises:
        ConfigError: If ``p`` is not in ``[1, n]`` or the distribution is unknown.
    """
    if not 1 <= p <= n:
        raise ConfigError(f"subspace dimension p must be in [1, n={n}], got {p}")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"unknown subspace distribution {distribution!r}; choose one of {DISTRIBUTIONS}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    draw = torch.randn if distribution == "gaussian" else torch.rand
    a = draw(n, p, generator=gen, dtype=dtype)  # (n, p)
    if distribution == "uniform-raw":
        return a.to(device) if device is not None else a
    sq = torch.zeros(p, dtype=torch.float64)
    for s in _row_blocks(n, 65536):  # float64 sums without a float64 copy of A
        sq += a[s : s + 65536].double().square().sum(0)
    a /= sq.sqrt().to(dtype)
    return a.to(device) if device is not None else a


def _row_blocks(n: int, block_rows: int) -> range:
    return range(0, n, block_rows)


def subspace_coordinates(A: Tensor, x: Tensor, *, block_rows: int = 65536) -> Tensor:
    """Return ``A^+ x`` (shape ``(p,)``, float64) without forming a pseudo-inverse.

    ``A^+ x`` is the least-squares solution ``c`` of ``A c ~ x`` (``A`` of full column
    rank). ``G = A^T A`` and ``A^T x`` are accumulated in float64 over row blocks, ``G`` is
    factored ``R^T R`` (Cholesky, ``p x p``) and ``c = G^{-1} A^T x`` is refined once with
    the residual ``r = x - A c`` (corrected semi-normal equations: Bjorck, "Stability
    analysis of the method of seminormal equations", 1987), which gives QR accuracy.
    Memory beyond ``A`` is ``O(block_rows * p)``.

    Args:
        A: Matrix ``(n, p)``, ``p <= n``, of full column rank.
        x: Vector ``(n,)``.
        block_rows: Rows converted to float64 at a time.

    Returns:
        ``A^+ x`` in float64 on ``A``'s device.

    Raises:
        ConfigError: If the shapes do not match or ``A`` is (numerically) rank deficient.
    """
    if A.ndim != 2 or A.shape[0] != x.shape[0] or A.shape[1] > A.shape[0]:
        raise ConfigError(
            f"A must be an (n, p) matrix with p <= n = {x.shape[0]} rows, "
            f"got shape {tuple(A.shape)}"
        )
    n, p = A.shape
    gram = torch.zeros(p, p, dtype=torch.float64, device=A.device)
    atx = torch.zeros(p, dtype=torch.float64, device=A.device)
    for s in _row_blocks(n, block_rows):
        blk = A[s : s + block_rows].double()  # (b, p)
        gram += blk.T @ blk
        atx += blk.T @ x[s : s + block_rows].double()
    evals = torch.linalg.eigvalsh(gram)
    if not evals[0] > 1e-14 * evals[-1]:
        raise ConfigError(
            f"A is rank deficient (cond(A)^2 ~ {float(evals[-1] / max(evals[0], 1e-300)):.3g}); "
            "its columns must be linearly independent"
        )
    chol = torch.linalg.cholesky(gram)
    c = torch.cholesky_solve(atx[:, None], chol)[:, 0]
    atr = torch.zeros(p, dtype=torch.float64, device=A.device)
    for s in _row_blocks(n, block_rows):
        blk = A[s : s + block_rows].double()
        atr += blk.T @ (x[s : s + block_rows].double() - blk @ c)
    return c + torch.cholesky_solve(atr[:, None], chol)[:, 0]


#: The last random subspace drawn (shape, seed and distribution -> matrix): drawing F1's
#: 1.46M x 100 matrix costs seconds, and a study measures many runs in the same subspace.
_DRAWN: dict[tuple, Tensor] = {}


def drawn_subspace(n: int, p: int, seed: int, distribution: str, dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    """:func:`random_subspace`, remembering the last matrix drawn (one at a time)."""
    key = (n, p, seed, distribution, dtype, str(device))
    if key not in _DRAWN:
        _DRAWN.clear()
        _DRAWN[key] = random_subspace(n, p, seed=seed, distribution=distribution,  # type: ignore[arg-type]
                                      dtype=dtype, device=device)
    return _DRAWN[key]
