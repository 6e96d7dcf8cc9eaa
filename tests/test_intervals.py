"""Intervals over trials against scipy's own t-tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sharpminima import intervals

A = [97.1, 97.6, 96.9, 97.4]
B = [96.2, 97.0, 95.1]


def test_the_mean_interval_is_scipys_t_interval():
    s = intervals.summary(A)
    lo, hi = stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=stats.sem(A))
    assert s["ci"] == pytest.approx([lo, hi], rel=1e-12)
    assert s["mean"] == pytest.approx(np.mean(A)) and s["std"] == pytest.approx(np.std(A, ddof=1))


def test_the_difference_is_welchs_interval():
    d = intervals.difference(A, B)
    ref = stats.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert d["ci"] == pytest.approx([ref.low, ref.high], rel=1e-10)
    assert d["mean"] == pytest.approx(np.mean(A) - np.mean(B))


def test_the_ratio_is_welch_on_the_log_scale():
    sb = [12.0, 30.0, 17.0]
    lb = [250.0, 310.0, 190.0]
    r = intervals.ratio(sb, lb)
    ref = stats.ttest_ind(np.log(lb), np.log(sb), equal_var=False).confidence_interval(0.95)
    assert r["ci"] == pytest.approx([math.exp(ref.low), math.exp(ref.high)], rel=1e-10)
    assert r["value"] == pytest.approx(stats.gmean(lb) / stats.gmean(sb))
    assert r["of_means"] == pytest.approx(np.mean(lb) / np.mean(sb))


def test_missing_and_non_finite_values_are_left_out_but_kept():
    s = intervals.summary([1.0, None, float("nan"), 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0
    assert s["values"][1] is None and len(s["values"]) == 4


def test_one_trial_has_no_interval():
    assert intervals.summary([5.0])["ci"] is None
    assert intervals.difference([1.0], [2.0, 3.0])["ci"] is None
    assert intervals.ratio([1.0], [2.0])["ci"] is None
    assert intervals.summary([])["mean"] is None


def test_a_ratio_of_zero_has_no_log_interval_but_keeps_the_ratio_of_means():
    r = intervals.ratio([0.0, 2.0], [4.0, 6.0])
    assert r["value"] is None and r["ci"] is None and r["of_means"] == 5.0


def test_identical_trials_give_a_point_interval():
    d = intervals.difference([2.0, 2.0], [1.0, 1.0])
    assert d["ci"] == [1.0, 1.0]


@pytest.mark.parametrize(
    ("ci", "expected"),
    [([0.2, 0.9], "above"), ([-0.9, -0.2], "below"), ([-0.1, 0.4], "not settled: the 95%")],
)
def test_verdicts_say_whether_the_interval_settles_it(ci, expected):
    words = intervals.verdict(ci, 0.0, n=3, above="above", below="below")
    assert words.startswith(expected)


def test_a_verdict_without_an_interval_says_why():
    assert "1 trial" in intervals.verdict(None, 1.0, n=1, above="a", below="b")


@pytest.mark.parametrize(
    ("ci", "threshold", "expect", "verdict"),
    [
        ([2.0, 5.0], 1.0, "above", "held"),
        ([0.2, 0.9], 1.0, "above", "did not hold"),
        ([0.8, 1.3], 1.0, "above", "cannot say"),
        (None, 1.0, "above", "cannot say"),
        ([-0.4, -0.1], 0.0, "below", "held"),
        ([0.1, 0.4], 0.0, "below", "did not hold"),
    ],
)
def test_a_claim_is_judged_by_its_interval(ci, threshold, expect, verdict):
    assert intervals.judge(ci, threshold, expect=expect) == verdict


def test_a_ratio_of_one_with_a_tight_interval_did_not_hold_the_10x_claim():
    r = intervals.ratio([261.0, 255.0, 267.0], [270.0, 240.0, 300.0])  # 270 +- 30 vs 261 +- 6
    assert intervals.judge(r["ci"], 1.0) == "cannot say"
    assert intervals.judge(r["ci"], 10.0) == "did not hold"


def test_judge_rejects_an_unknown_side():
    with pytest.raises(ValueError, match="expect must be"):
        intervals.judge([0.0, 1.0], 0.5, expect="sideways")


def test_judge_range():
    assert intervals.judge_range([4.0, 6.0], 3.0, 10.0) == "held"
    assert intervals.judge_range([1.0, 2.0], 3.0, 10.0) == "did not hold"
    assert intervals.judge_range([2.0, 4.0], 3.0, 10.0) == "cannot say"
    assert intervals.judge_range(None, 3.0, 10.0) == "cannot say"


def test_rank_correlation_is_scipys_spearman_with_an_interval():
    x, y = [1, 2, 3, 4, 5, 6], [1.0, 3.0, 2.0, 5.0, 4.0, 6.0]
    r = intervals.rank_correlation(x, y)
    assert r["value"] == pytest.approx(stats.spearmanr(x, y).statistic)
    lo, hi = r["ci"]
    assert -1 < lo < r["value"] < hi < 1
    assert intervals.rank_correlation(x[:3], y[:3])["ci"] is None  # too few pairs
    assert intervals.rank_correlation([1, 2], [3.0, 3.0])["value"] is None  # constant
