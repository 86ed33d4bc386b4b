"""training.stats against answers known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training import stats as S


def test_constant_differences_collapse_the_interval():
    a = np.array([0.5, 0.2, 0.9, 0.0, 0.4])
    out = S.paired_bootstrap(a, a - 0.25, n_boot=500)
    # every resample holds five copies of 0.25: the same sum, the same mean
    assert out.ci_low == out.ci_high
    assert out.mean_diff == pytest.approx(0.25, abs=1e-12)
    assert out.ci_low == pytest.approx(0.25, abs=1e-12)
    assert (out.n, out.n_clusters, out.n_boot, out.level) == (5, 5, 500, 0.95)


# Two-point case: differences +1 x 5 and -1 x 5. A resample's mean is (2K - 10) / 10 with K ~ Bin(10, 1/2)
# the number of +1 drawn: P(K <= 1) = 11/1024 = 0.0107, P(K <= 2) = 56/1024 = 0.0547, so the exact 2.5%
# quantile is K = 2, a mean of -0.6, and by symmetry the 97.5% quantile is +0.6.
# Monte Carlo tolerance: with 2,000 resamples numpy's linear quantile at 2.5% reads sorted draws 49 and 50
# (0-based; 0.025 * 1999 = 49.975). Both are K = 2 unless at least 50 draws have K <= 1 (expected 21.5;
# P = 8.7e-8 under Bin(2000, 0.0107)) or at most 50 have K <= 2 (expected 109; P = 6.5e-11). So any seed
# gives exactly -0.6 and +0.6 except with probability under 2e-7; the test checks several seeds.
TWO_POINT_A = np.array([1.0] * 5 + [0.0] * 5)
TWO_POINT_B = np.array([0.0] * 5 + [1.0] * 5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_two_point_interval_is_the_binomial_quantile(seed):
    out = S.paired_bootstrap(TWO_POINT_A, TWO_POINT_B, n_boot=2000, seed=seed)
    assert out.mean_diff == 0.0
    assert out.ci_low == pytest.approx(-0.6) and out.ci_high == pytest.approx(0.6)


def test_two_point_bootstrap_distribution_is_binomial():
    means = S.bootstrap_means(TWO_POINT_A - TWO_POINT_B, n_boot=20_000, seed=7)
    k = np.rint((means * 10 + 10) / 2).astype(int)                  # back to K
    freq = np.bincount(k, minlength=11) / len(means)
    pmf = np.array([math.comb(10, j) for j in range(11)]) / 1024
    sd = np.sqrt(pmf * (1 - pmf) / len(means))
    assert np.all(np.abs(freq - pmf) <= 5 * sd)                      # 5 binomial sds per cell


def test_same_seed_same_result_and_other_seed_differs():
    rng = np.random.default_rng(0)
    a, b = rng.random(300), rng.random(300)
    assert S.paired_bootstrap(a, b, seed=3) == S.paired_bootstrap(a, b, seed=3)
    assert S.paired_bootstrap(a, b, seed=3) != S.paired_bootstrap(a, b, seed=4)


def test_resampling_in_chunks_keeps_every_draw(monkeypatch):
    # 7 units, 3 cells per chunk -> one draw per chunk; the means are still n_boot genuine resample means
    monkeypatch.setattr(S, "_CELLS_PER_CHUNK", 3)
    means = S.bootstrap_means(np.arange(7.0), n_boot=50, seed=0)
    assert means.shape == (50,) and np.all((means >= 0) & (means <= 6))
    assert np.all(np.isclose(means * 7, np.round(means * 7)))       # a mean of 7 integers


def test_one_cluster_per_unit_is_the_unit_bootstrap():
    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(50)
    assert S.paired_bootstrap(a, b, clusters=np.arange(50)) == S.paired_bootstrap(a, b)


def test_clusters_resample_whole_users():
    # user 7 has 3 units of difference 1, user 9 one unit of 0. Drawing 2 users: (7, 7) -> 1 with
    # probability 1/4, one of each -> 3/4 (units, not users, are averaged) with 1/2, (9, 9) -> 0 with 1/4.
    d = np.array([1.0, 1.0, 1.0, 0.0])
    users = np.array([7, 7, 7, 9])
    means = S.bootstrap_means(d, n_boot=4000, seed=0, clusters=users)
    values, counts = np.unique(means, return_counts=True)
    assert values == pytest.approx([0.0, 0.75, 1.0])
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=5 * math.sqrt(0.25 / 4000))
    out = S.paired_bootstrap(d, np.zeros(4), clusters=users, n_boot=4000)
    assert (out.mean_diff, out.ci_low, out.ci_high, out.n, out.n_clusters) == (0.75, 0.0, 1.0, 4, 2)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        S.paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ValueError):
        S.paired_bootstrap(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        S.paired_bootstrap(np.array([np.nan]), np.array([0.0]))


def test_seed_spread():
    out = S.seed_spread([0.30, 0.34, 0.32])
    # mean 0.32; deviations -0.02, 0.02, 0 -> sample variance 0.0008 / 2 = 0.0004 -> std 0.02
    assert (out.mean, out.std, out.min, out.max, out.n) == pytest.approx((0.32, 0.02, 0.30, 0.34, 3))
    assert S.seed_spread([0.5]).std == 0.0
