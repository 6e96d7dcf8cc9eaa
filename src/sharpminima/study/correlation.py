"""Rank correlation between a measure and the generalization gap, with bootstrap intervals.

Three statistics, each over the runs that met the training-loss criterion:

* **Kendall's tau-b** (the variant ``scipy.stats.kendalltau`` computes by default, so ties
  are handled the same way). For ``n`` runs with measure ``m`` and gap ``g``, over the
  ``n0 = n (n - 1) / 2`` pairs ``i < j``::

      S     = sum_{i<j} sign(m_i - m_j) sign(g_i - g_j)
      tau_b = S / sqrt((n0 - n_m) (n0 - n_g))

  where ``n_m`` (``n_g``) counts the pairs tied in ``m`` (``g``). It is NaN when either
  variable is constant.
* **Spearman's rho**: the Pearson correlation of the average ranks (ties share the mean of
  their ranks), as ``scipy.stats.spearmanr``.
* **Granulated Kendall's tau** (Jiang, Neyshabur, Mobahi, Krishnan, Bengio, "Fantastic
  Generalization Measures and Where to Find Them", ICLR 2020, Section 4.2): for each
  hyperparameter ``h`` of the grid, the runs are grouped by the values of all the *other*
  hyperparameters, so that only ``h`` changes inside a group; ``psi_h`` is the mean over
  groups of the Kendall tau inside the group, and ``Psi`` the mean of ``psi_h`` over the
  hyperparameters. A measure that merely tracks one hyperparameter shows up in that
  ``psi_h`` alone. Inside a group we use tau-b with two conventions that the formula of
  Jiang et al. (their tau-a) implies: a group whose gap is constant ranks nothing and is
  skipped; a group whose measure is constant while the gap varies scores 0. Axes named in
  ``replicate_axes`` (by default ``seed``) are reported but left out of ``Psi``: changing
  the seed is a replicate, not a hyperparameter.

Confidence intervals are percentile bootstrap intervals: ``B`` resamples of the runs with
replacement (a seeded ``numpy.random.Generator``), the statistic recomputed on each (a
duplicated run forms pairs tied in both variables, which tau-b leaves out of its
numerator), and the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the finite
values taken.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sharpminima.errors import ConfigError

#: Grid axes that are replicates rather than hyperparameters (left out of ``Psi``).
REPLICATE_AXES = ("seed",)
#: Resamples processed together (memory ``block * n * n`` bytes per sign matrix).
_BLOCK = 64


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap interval.

    Attributes:
        value: The statistic on the runs as given (NaN if undefined).
        low: Lower end of the interval (NaN if no resample gave a finite value).
        high: Upper end of the interval.
        num_valid: Bootstrap resamples on which the statistic was finite.
    """

    value: float
    low: float = math.nan
    high: float = math.nan
    num_valid: int = 0

    def covers(self, x: float) -> bool:
        """Whether ``x`` lies in ``[low, high]``."""
        return bool(self.low <= x <= self.high)


@dataclass(frozen=True)
class Correlation:
    """How well one measure ranks the runs by one generalization gap.

    Attributes:
        measure: Name of the measure.
        gap: Name of the gap (``"loss"`` or ``"error"``).
        n: Runs used (converged, with a finite measure).
        kendall: Kendall's tau-b over all runs.
        spearman: Spearman's rho over all runs.
        granulated: ``psi_h`` per grid axis with at least two values.
        granulated_mean: ``Psi``, the mean of ``psi_h`` over the non-replicate axes.
        num_groups: Groups that entered each ``psi_h``.
    """

    measure: str
    gap: str
    n: int
    kendall: Estimate
    spearman: Estimate
    granulated: dict[str, Estimate] = field(default_factory=dict)
    granulated_mean: Estimate = field(default_factory=lambda: Estimate(math.nan))
    num_groups: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------
# Point statistics
# ---------------------------------------------------------------------------------------


def _as_vector(a: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64)
    if v.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional, got shape {v.shape}")
    return v


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape != y.shape:
        raise ConfigError(f"measure and gap need equal lengths, got {x.size} and {y.size}")


def _signs(v: np.ndarray) -> np.ndarray:
    """``sign(v_i - v_j)`` for all ``i, j``, shape ``(..., n, n)`` (int8)."""
    return np.sign(v[..., :, None] - v[..., None, :]).astype(np.int8)


def _tau_from_signs(sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Tau-b from full sign matrices ``(..., n, n)`` (the diagonal is 0 and not a pair)."""
    n = sx.shape[-1]
    n0 = n * (n - 1) / 2
    s = (sx.astype(np.int32) * sy).sum(axis=(-2, -1)) / 2
    ties_x = ((sx == 0).sum(axis=(-2, -1)) - n) / 2
    ties_y = ((sy == 0).sum(axis=(-2, -1)) - n) / 2
    den = np.sqrt((n0 - ties_x) * (n0 - ties_y))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, s / np.where(den > 0, den, 1.0), np.nan)


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b of two equal-length vectors (scipy's default variant).

    ``tau_b = S / sqrt((n0 - n_x)(n0 - n_y))`` with ``S`` the number of concordant minus
    discordant pairs, ``n0 = n(n-1)/2`` and ``n_x``, ``n_y`` the pairs tied in ``x``, ``y``.

    Args:
        x: First variable ``(n,)``.
        y: Second variable ``(n,)``.

    Returns:
        Tau-b in ``[-1, 1]``; NaN if ``n < 2`` or a variable is constant.

    Raises:
        ConfigError: If the vectors differ in length or are not 1-D.
    """
    xv, yv = _as_vector(x, "x"), _as_vector(y, "y")
    _check_pair(xv, yv)
    if xv.size < 2:
        return math.nan
    return float(_tau_from_signs(_signs(xv), _signs(yv)))


def average_ranks(a: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks ``1..n`` of ``a``, ties sharing the mean of their ranks (``scipy.stats.rankdata``).

    Args:
        a: Values ``(n,)``.

    Returns:
        Float ranks ``(n,)``.
    """
    v = _as_vector(a, "a")
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    starts = np.r_[True, sorted_v[1:] != sorted_v[:-1]]
    group = np.cumsum(starts) - 1  # tie group of each sorted position
    counts = np.bincount(group)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(v.size)
    ranks[order] = mean_rank[group]
    return ranks


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks of ``x`` and ``y``.

    Args:
        x: First variable ``(n,)``.
        y: Second variable ``(n,)``.

    Returns:
        Rho in ``[-1, 1]``; NaN if ``n < 2`` or a variable is constant.

    Raises:
        ConfigError: If the vectors differ in length or are not 1-D.
    """
    xv, yv = _as_vector(x, "x"), _as_vector(y, "y")
    _check_pair(xv, yv)
    if xv.size < 2:
        return math.nan
    return float(_pearson_rows(average_ranks(xv), average_ranks(yv)))


def _rho_from_signs(sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    # average rank_i = (n + 1) / 2 + sum_j sign(v_i - v_j) / 2, so Pearson on row sums works
    return _pearson_rows(sx.sum(-1, dtype=np.int32).astype(float), sy.sum(-1, dtype=np.int32).astype(float))


# ---------------------------------------------------------------------------------------
# Granulated tau
# ---------------------------------------------------------------------------------------


def group_labels(hparams: Sequence[Mapping[str, Any]], axis: str) -> np.ndarray:
    """Label each run by the values of every hyperparameter except ``axis``.

    Args:
        hparams: One dict of hyperparameter values per run (the grid point).
        axis: The hyperparameter that may vary inside a group.

    Returns:
        Integer group labels ``(n,)``.
    """
    keys: dict[tuple, int] = {}
    out = np.empty(len(hparams), dtype=np.int64)
    for i, hp in enumerate(hparams):
        key = tuple(sorted((k, repr(v)) for k, v in hp.items() if k != axis))
        out[i] = keys.setdefault(key, len(keys))
    return out


def _group_taus(sx: np.ndarray, sy: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Tau-b inside each group (NaN: gap constant or < 2 runs; 0: measure constant)."""
    n = labels.size
    num = int(labels.max()) + 1
    mask = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    lab = np.broadcast_to(labels[:, None], (n, n))[mask]
    s = np.bincount(lab, weights=(sx.astype(np.int32) * sy)[mask], minlength=num) / 2
    ties_x = np.bincount(lab, weights=(sx == 0)[mask], minlength=num) / 2
    ties_y = np.bincount(lab, weights=(sy == 0)[mask], minlength=num) / 2
    size = np.bincount(labels, minlength=num)
    n0 = size * (size - 1) / 2
    free_x, free_y = n0 - ties_x, n0 - ties_y
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(free_x * free_y > 0, s / np.sqrt(np.maximum(free_x * free_y, 1e-300)), 0.0)
    return np.where(free_y > 0, tau, np.nan)


def _granulated(
    sx: np.ndarray, sy: np.ndarray, labels: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, int]]:
    psi, groups = {}, {}
    for axis, lab in labels.items():
        taus = _group_taus(sx, sy, lab)
        finite = taus[np.isfinite(taus)]
        psi[axis] = float(finite.mean()) if finite.size else math.nan
        groups[axis] = int(finite.size)
    return psi, groups


def _mean_psi(psi: Mapping[str, float], replicate_axes: Sequence[str]) -> float:
    vals = [v for k, v in psi.items() if k not in replicate_axes and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def granulated_tau(
    measure: Sequence[float] | np.ndarray,
    gap: Sequence[float] | np.ndarray,
    hparams: Sequence[Mapping[str, Any]],
    *,
    replicate_axes: Sequence[str] = REPLICATE_AXES,
) -> tuple[dict[str, float], float]:
    """Granulated Kendall tau of Jiang et al. (2020): ``psi_h`` per axis and their mean ``Psi``.

    ``psi_h = (1 / |G_h|) sum_{groups g in G_h} tau_b(measure_g, gap_g)``, where ``G_h``
    are the groups of runs that share every hyperparameter except ``h`` (groups with a
    constant gap are skipped; a constant measure scores 0), and ``Psi`` is the mean of
    ``psi_h`` over the axes with at least two values that are not in ``replicate_axes``.

    Args:
        measure: Measure per run ``(n,)``.
        gap: Generalization gap per run ``(n,)``.
        hparams: Hyperparameter values per run (dicts with the same keys).
        replicate_axes: Axes reported but left out of ``Psi``.

    Returns:
        ``({axis: psi_h}, Psi)``.

    Raises:
        ConfigError: If the lengths differ.
    """
    m, g = _as_vector(measure, "measure"), _as_vector(gap, "gap")
    _check_pair(m, g)
    if len(hparams) != m.size:
        raise ConfigError(f"need one hyperparameter dict per run, got {len(hparams)} for {m.size} runs")
    labels = _axis_labels(hparams)
    psi, _ = _granulated(_signs(m), _signs(g), labels)
    return psi, _mean_psi(psi, replicate_axes)


def _axis_labels(hparams: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    axes = list(dict.fromkeys(k for hp in hparams for k in hp))
    out = {}
    for axis in axes:
        if len({repr(hp.get(axis)) for hp in hparams}) >= 2:
            out[axis] = group_labels(hparams, axis)
    return out


# ---------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------


def _interval(samples: np.ndarray, value: float, level: float) -> Estimate:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return Estimate(value, math.nan, math.nan, 0)
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(lo), float(hi), int(finite.size))


def _check_bootstrap(num_bootstrap: int, level: float) -> None:
    if not (isinstance(num_bootstrap, int) and num_bootstrap >= 0):
        raise ConfigError(f"the number of bootstrap resamples must be an integer >= 0, got {num_bootstrap!r}")
    if not 0 < level < 1:
        raise ConfigError(f"the confidence level must lie in (0, 1), got {level!r}")


def bootstrap_indices(n: int, num_bootstrap: int, seed: int) -> np.ndarray:
    """Resampled run indices ``(B, n)``, drawn with replacement from a seeded generator."""
    return np.random.default_rng(seed).integers(0, n, size=(num_bootstrap, n))


def correlate(
    measure: Sequence[float] | np.ndarray,
    gap: Sequence[float] | np.ndarray,
    hparams: Sequence[Mapping[str, Any]] | None = None,
    *,
    measure_name: str = "measure",
    gap_name: str = "gap",
    num_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    replicate_axes: Sequence[str] = REPLICATE_AXES,
) -> Correlation:
    """Kendall tau-b, Spearman rho and granulated tau of a measure against a gap, with CIs.

    Runs whose measure or gap is not finite are dropped first. The same ``B`` resamples
    (from ``seed``) serve every statistic, so two measures compared with the same seed and
    runs see identical resamples.

    Args:
        measure: Measure per run ``(n,)``.
        gap: Gap per run ``(n,)``.
        hparams: Grid point of each run (for the granulated tau); None skips it.
        measure_name: Name recorded in the result.
        gap_name: Name recorded in the result.
        num_bootstrap: Resamples ``B`` (0: no intervals).
        level: Confidence level of the percentile intervals.
        seed: Seed of the resampling.
        replicate_axes: Axes left out of the granulated mean ``Psi``.

    Returns:
        :class:`Correlation`.

    Raises:
        ConfigError: For mismatched lengths, ``B < 0`` or a level outside (0, 1).
    """
    _check_bootstrap(num_bootstrap, level)
    m, g = _as_vector(measure, "measure"), _as_vector(gap, "gap")
    _check_pair(m, g)
    if hparams is not None and len(hparams) != m.size:
        raise ConfigError(f"need one hyperparameter dict per run, got {len(hparams)} for {m.size} runs")
    keep = np.isfinite(m) & np.isfinite(g)
    m, g = m[keep], g[keep]
    hps = [hp for hp, k in zip(hparams or [], keep, strict=False) if k] if hparams is not None else None
    n = int(m.size)
    labels = _axis_labels(hps) if hps else {}
    if n < 2:
        nan = Estimate(math.nan)
        return Correlation(measure_name, gap_name, n, nan, nan, dict.fromkeys(labels, nan), nan,
                           dict.fromkeys(labels, 0))
    sx, sy = _signs(m), _signs(g)
    tau = float(_tau_from_signs(sx, sy))
    rho = float(_rho_from_signs(sx, sy))
    psi, groups = _granulated(sx, sy, labels)
    psi_mean = _mean_psi(psi, replicate_axes)

    taus, rhos = np.full(num_bootstrap, np.nan), np.full(num_bootstrap, np.nan)
    psis = {axis: np.full(num_bootstrap, np.nan) for axis in labels}
    psi_means = np.full(num_bootstrap, np.nan)
    idx = bootstrap_indices(n, num_bootstrap, seed)
    for start in range(0, num_bootstrap, _BLOCK):
        block = idx[start : start + _BLOCK]  # (b, n)
        bx = sx[block[:, :, None], block[:, None, :]]  # (b, n, n)
        by = sy[block[:, :, None], block[:, None, :]]
        taus[start : start + len(block)] = _tau_from_signs(bx, by)
        rhos[start : start + len(block)] = _rho_from_signs(bx, by)
        if labels:
            for r, sample in enumerate(block):
                b_psi, _ = _granulated(bx[r], by[r], {a: lab[sample] for a, lab in labels.items()})
                for axis, v in b_psi.items():
                    psis[axis][start + r] = v
                psi_means[start + r] = _mean_psi(b_psi, replicate_axes)
    return Correlation(
        measure=measure_name,
        gap=gap_name,
        n=n,
        kendall=_interval(taus, tau, level),
        spearman=_interval(rhos, rho, level),
        granulated={axis: _interval(psis[axis], psi[axis], level) for axis in labels},
        granulated_mean=_interval(psi_means, psi_mean, level),
        num_groups=groups,
    )
