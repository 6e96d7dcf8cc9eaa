"""Intervals over trials: a mean, a difference of two means, a ratio of two regimes.

With the handful of trials a reproduction affords (2 to 5), a normal approximation
understates the uncertainty several-fold and a bootstrap has too few distinct resamples to
mean much, so every interval here is Student's t:

* :func:`summary`: mean, sample standard deviation and the t-interval of the mean
  (``mean +- t_{n-1} s / sqrt(n)``);
* :func:`difference`: ``a - b`` of two independent groups with Welch's interval (unequal
  variances, Welch-Satterthwaite degrees of freedom): the SB - LB accuracy gap;
* :func:`ratio`: ``b / a`` as the ratio of geometric means, with the Welch interval of
  the difference of mean logs mapped back by ``exp``: the LB/SB sharpness ratio, whose
  trials spread multiplicatively.

Each interval is ``None`` when a group has fewer than two values (no spread to estimate).
:func:`verdict` says in words whether an interval settles a comparison or leaves it open.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

#: Confidence level of every interval.
LEVEL = 0.95


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _t(df: float, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def summary(values: Sequence[float | None], level: float = LEVEL) -> dict[str, Any]:
    """Mean, sample std, count, t-interval of the mean and the values as given.

    Missing or non-finite values (``None``, NaN) are kept in ``values`` and left out of the
    statistics.

    Returns:
        ``{"mean", "std", "n", "ci", "level", "values"}``; ``mean``/``std`` are None for no
        value, ``ci`` is ``[lo, hi]`` or None for fewer than two values.
    """
    vals = _finite(values)
    out: dict[str, Any] = {"mean": None, "std": None, "n": len(vals), "ci": None,
                           "level": level, "values": list(values)}
    if not vals:
        return out
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    out.update(mean=mean, std=std)
    if len(vals) > 1:
        half = _t(len(vals) - 1, level) * std / math.sqrt(len(vals))
        out["ci"] = [mean - half, mean + half]
    return out


def _welch(
    a: list[float], b: list[float], level: float
) -> tuple[float, float, float | None, list[float] | None]:
    """``mean(a) - mean(b)``, its standard error, Welch's df and interval (None if n < 2)."""
    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, None, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, 0.0, math.inf, [d, d]
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t(df, level) * se
    return d, se, df, [d - half, d + half]


def difference(a: Sequence[float | None], b: Sequence[float | None], level: float = LEVEL) -> dict[str, Any]:
    """``mean(a) - mean(b)`` for two independent groups, with Welch's t-interval.

    Returns:
        ``{"mean", "se", "df", "ci", "level", "n"}``; ``mean`` None if a group is empty,
        ``se``/``df``/``ci`` None if a group has fewer than two values.
    """
    va, vb = _finite(a), _finite(b)
    out: dict[str, Any] = {"mean": None, "se": None, "df": None, "ci": None, "level": level,
                           "n": [len(va), len(vb)]}
    if not va or not vb:
        return out
    d, se, df, ci = _welch(va, vb, level)
    out.update(mean=d, se=None if math.isnan(se) else se, df=df, ci=ci)
    return out


def ratio(a: Sequence[float | None], b: Sequence[float | None], level: float = LEVEL) -> dict[str, Any]:
    """``b / a`` as the ratio of geometric means, with a Welch t-interval on the log scale.

    Also gives ``of_means``, ``mean(b) / mean(a)``. Values that are not positive have no
    logarithm: then ``value`` and ``ci`` are None and ``of_means`` is still given.

    Returns:
        ``{"value", "ci", "of_means", "level", "n", "method"}``.
    """
    va, vb = _finite(a), _finite(b)
    out: dict[str, Any] = {"value": None, "ci": None, "of_means": None, "level": level,
                           "n": [len(va), len(vb)], "method": "welch-t on log values"}
    if not va or not vb:
        return out
    ma = statistics.fmean(va)
    out["of_means"] = statistics.fmean(vb) / ma if ma != 0 else None
    if min(va) <= 0 or min(vb) <= 0:
        return out
    d, _, _, ci = _welch([math.log(v) for v in vb], [math.log(v) for v in va], level)
    out["value"] = math.exp(d)
    out["ci"] = None if ci is None else [math.exp(ci[0]), math.exp(ci[1])]
    return out


def verdict(ci: Sequence[float] | None, null: float, *, n: int, above: str, below: str) -> str:
    """Words for what an interval says against a null value (0 for a gap, 1 for a ratio).

    Args:
        ci: ``[lo, hi]``, or None (fewer than two trials).
        null: The value of "no effect".
        n: Trials in the smaller group.
        above: The verdict when the whole interval is above ``null``.
        below: The verdict when the whole interval is below ``null``.
    """
    if ci is None:
        return f"not settled ({n} trial{'s' if n != 1 else ''}: no interval)"
    lo, hi = ci
    if lo > null:
        return above
    if hi < null:
        return below
    return (f"not settled: the {LEVEL:.0%} interval includes {null:g}, so other seeds can "
            "reverse it")


#: The three verdicts of a claim tested against an interval.
HELD, NOT_HELD, CANNOT_SAY = "held", "did not hold", "cannot say"


def judge(ci: Sequence[float] | None, threshold: float, *, expect: str = "above") -> str:
    """A claim's verdict from its interval, never from the point estimate.

    The claim is that a quantity lies above (``expect="above"``) or below ``threshold``:
    it *held* when the whole interval is on the claimed side, it *did not hold* when the
    whole interval is on the other side, and otherwise (the interval contains the
    threshold, or there is no interval: fewer than two trials) we *cannot say*.

    Raises:
        ValueError: For an ``expect`` other than "above" or "below".
    """
    if expect not in ("above", "below"):
        raise ValueError(f"expect must be 'above' or 'below', got {expect!r}")
    if ci is None:
        return CANNOT_SAY
    lo, hi = ci
    if (lo > threshold) if expect == "above" else (hi < threshold):
        return HELD
    if (hi < threshold) if expect == "above" else (lo > threshold):
        return NOT_HELD
    return CANNOT_SAY


def judge_range(ci: Sequence[float] | None, low: float, high: float) -> str:
    """Verdict of a claim that a quantity lies in ``[low, high]`` (see :func:`judge`).

    Held when the interval is inside, did not hold when it is wholly outside, else cannot say.
    """
    if ci is None:
        return CANNOT_SAY
    lo, hi = ci
    if low <= lo and hi <= high:
        return HELD
    if hi < low or lo > high:
        return NOT_HELD
    return CANNOT_SAY


def rank_correlation(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Spearman's rho of paired values, with a Fisher-z interval.

    The interval is ``tanh(atanh(rho) +- z sqrt((1 + rho^2 / 2) / (n - 3)))`` (Bonett and
    Wright 2000's standard error for Spearman's rho), approximate for few points; rho is
    clipped to +-0.999 first so that a perfect ranking of a handful of points still gets
    an interval of finite width. No interval below four pairs.

    Returns:
        ``{"value", "ci", "n", "level", "method"}``; ``value`` None below two pairs or for
        a constant series.
    """
    from scipy.stats import norm, spearmanr

    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    out: dict[str, Any] = {"value": None, "ci": None, "n": len(pairs), "level": level,
                           "method": "spearman, fisher-z interval (bonett-wright s.e.)"}
    if len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:  # too few, or constant
        return out
    rho = float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
    out["value"] = rho
    if len(pairs) >= 4:
        r = max(min(rho, 0.999), -0.999)
        half = float(norm.ppf(0.5 + level / 2)) * math.sqrt((1 + r * r / 2) / (len(pairs) - 3))
        out["ci"] = [math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)]
    return out
