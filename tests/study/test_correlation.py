import math

import numpy as np
import pytest
import scipy.stats

from sharpminima.errors import ConfigError
from sharpminima.study.correlation import (
    average_ranks,
    correlate,
    granulated_tau,
    group_labels,
    kendall_tau,
    spearman_rho,
)


def _grid(a_values, b_values, seeds):
    return [{"a": a, "b": b, "seed": s} for a in a_values for b in b_values for s in seeds]


@pytest.mark.parametrize("seed", range(5))
def test_kendall_and_spearman_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        n = int(rng.integers(2, 30))
        x = rng.integers(0, 4, n).astype(float)  # many ties
        y = rng.integers(0, 3, n) + rng.integers(0, 2, n) * rng.normal(size=n)
        want_tau = scipy.stats.kendalltau(x, y).statistic  # variant "b", scipy's default
        want_rho = scipy.stats.spearmanr(x, y).statistic
        for got, want in ((kendall_tau(x, y), want_tau), (spearman_rho(x, y), want_rho)):
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)


def test_average_ranks_match_scipy():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(average_ranks(x), scipy.stats.rankdata(x))


def test_a_measure_equal_to_the_gap_gets_tau_one():
    rng = np.random.default_rng(0)
    hps = _grid(range(3), range(3), range(2))
    gap = rng.normal(size=len(hps))
    c = correlate(gap, gap, hps, num_bootstrap=200, seed=1)
    assert c.kendall.value == pytest.approx(1.0) and c.spearman.value == pytest.approx(1.0)
    assert c.kendall.low == pytest.approx(1.0) and c.kendall.high == pytest.approx(1.0)
    assert c.granulated_mean.value == pytest.approx(1.0)
    assert all(e.value == pytest.approx(1.0) for e in c.granulated.values())
    # any increasing transform ranks the same
    assert correlate(np.exp(3 * gap), gap, num_bootstrap=0).kendall.value == pytest.approx(1.0)
    assert correlate(-gap, gap, num_bootstrap=0).kendall.value == pytest.approx(-1.0)


def test_a_random_measure_gets_tau_near_zero_within_its_interval():
    rng = np.random.default_rng(3)
    gap, noise = rng.normal(size=300), rng.normal(size=300)
    c = correlate(noise, gap, num_bootstrap=500, seed=0)
    assert abs(c.kendall.value) < 0.1 and c.kendall.covers(0.0)
    assert abs(c.spearman.value) < 0.15 and c.spearman.covers(0.0)
    assert c.kendall.high - c.kendall.low < 0.2 and c.kendall.num_valid == 500


def test_a_measure_monotone_in_one_hyperparameter_shows_only_in_its_granulated_tau():
    rng = np.random.default_rng(0)
    hps = _grid(range(4), range(4), range(3))
    a = np.array([h["a"] for h in hps], float)
    b = np.array([h["b"] for h in hps], float)
    gap = a + 10 * b + 0.01 * rng.normal(size=len(hps))  # b dominates the overall ranking
    psi, mean = granulated_tau(a, gap, hps)
    assert psi["a"] == pytest.approx(1.0)
    assert psi["b"] == 0.0  # constant inside every b-group: ranks nothing
    assert mean == pytest.approx(0.5)  # (psi_a + psi_b) / 2; seed is a replicate
    assert kendall_tau(a, gap) < 0.3  # the overall tau hides it
    # and the other way round
    psi, _ = granulated_tau(b, gap, hps)
    assert psi["b"] == pytest.approx(1.0) and psi["a"] == 0.0
    c = correlate(a, gap, hps, num_bootstrap=200, seed=0)
    assert c.granulated["a"].value == pytest.approx(1.0) and c.granulated["a"].low > 0.9
    assert c.num_groups == {"a": 12, "b": 12, "seed": 16}


def test_groups_with_a_constant_gap_are_skipped():
    hps = _grid(range(2), range(3), [0])
    gap = np.array([h["b"] for h in hps], float)  # constant within each a-group
    psi, mean = granulated_tau(np.arange(len(hps), dtype=float), gap, hps)
    assert math.isnan(psi["a"]) and psi["b"] == pytest.approx(1.0) and mean == pytest.approx(1.0)


def test_group_labels_ignore_only_the_varying_axis():
    hps = [{"a": 1, "b": 1}, {"a": 2, "b": 1}, {"a": 1, "b": 2}]
    labels = group_labels(hps, "a")
    assert labels[0] == labels[1] != labels[2]


def test_bootstrap_interval_covers_the_true_tau():
    # bivariate normal with correlation r: population tau = 2 arcsin(r) / pi
    r, n = 0.6, 60
    true_tau = 2 * math.asin(r) / math.pi
    cov = [[1, r], [r, 1]]
    covered = 0
    for seed in range(40):
        xy = np.random.default_rng(100 + seed).multivariate_normal([0, 0], cov, size=n)
        c = correlate(xy[:, 0], xy[:, 1], num_bootstrap=300, seed=seed)
        covered += c.kendall.covers(true_tau)
    assert covered >= 33  # nominal 95%: 38 of 40 expected


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert correlate(x, y, num_bootstrap=100, seed=4) == correlate(x, y, num_bootstrap=100, seed=4)
    assert correlate(x, y, num_bootstrap=100, seed=4) != correlate(x, y, num_bootstrap=100, seed=5)


def test_non_finite_runs_are_dropped_and_tiny_inputs_give_nan():
    c = correlate([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, np.inf], num_bootstrap=10)
    assert c.n == 2 and c.kendall.value == pytest.approx(1.0)
    c = correlate([1.0], [2.0], num_bootstrap=10)
    assert c.n == 1 and math.isnan(c.kendall.value)
    assert math.isnan(kendall_tau([1.0, 1.0], [1.0, 2.0]))  # constant measure, like scipy


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kendall_tau([1, 2, 3], [1, 2]), "equal lengths"),
        (lambda: spearman_rho([[1, 2]], [[1, 2]]), "one-dimensional"),
        (lambda: correlate([1, 2], [1, 2], num_bootstrap=-1), "bootstrap resamples"),
        (lambda: correlate([1, 2], [1, 2], level=1.5), "confidence level"),
        (lambda: correlate([1, 2], [1, 2], [{"a": 1}]), "one hyperparameter dict per run"),
        (lambda: granulated_tau([1, 2], [1, 2], [{"a": 1}]), "one hyperparameter dict per run"),
    ],
)
def test_errors_are_one_line_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
