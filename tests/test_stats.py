"""Tests for pipeline.evaluation.stats: bootstrap means and paired (cluster) bootstrap differences."""

import math
import time

import numpy as np
import pytest

from pipeline.evaluation.stats import (
    Estimate,
    bootstrap_mean,
    bootstrap_ratio,
    paired_bootstrap_difference,
    win_rate,
)


def test_constant_values_give_zero_width_interval() -> None:
    estimate = bootstrap_mean([0.1] * 256)
    assert estimate == Estimate(mean=0.1, ci_low=0.1, ci_high=0.1, n=256)


def test_single_value_gives_that_value() -> None:
    assert bootstrap_mean([3.5]) == Estimate(mean=3.5, ci_low=3.5, ci_high=3.5, n=1)


def test_mean_is_exact_and_interval_contains_it() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    estimate = bootstrap_mean(values)
    assert estimate.mean == 4.0
    assert estimate.n == 5
    assert estimate.ci_low < 4.0 < estimate.ci_high
    # The bootstrap mean of resampled values never leaves the range of the data.
    assert 1.0 <= estimate.ci_low and estimate.ci_high <= 10.0


def test_interval_narrows_with_more_data() -> None:
    values = np.random.default_rng(0).normal(size=400)
    small, large = bootstrap_mean(values[:25]), bootstrap_mean(values)
    assert large.ci_high - large.ci_low < small.ci_high - small.ci_low


def test_binary_half_width_matches_normal_approximation() -> None:
    estimate = bootstrap_mean([0.0, 1.0] * 50)
    assert estimate.mean == 0.5
    half_width = (estimate.ci_high - estimate.ci_low) / 2
    # Normal approximation: 1.96 * sqrt(p(1-p)/n) = 1.96 * 0.05 = 0.098. Tolerance 0.02 covers the
    # discreteness of a mean of 100 zeros and ones (steps of 0.01) and Monte Carlo error of 2000 resamples.
    assert half_width == pytest.approx(1.96 * math.sqrt(0.25 / 100), abs=0.02)


def test_interval_widens_with_confidence() -> None:
    values = np.random.default_rng(1).normal(size=100)
    narrow, wide = bootstrap_mean(values, confidence=0.5), bootstrap_mean(values, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high


def test_same_seed_same_result_other_seed_differs() -> None:
    values = np.random.default_rng(2).normal(size=64)
    assert bootstrap_mean(values, seed=7) == bootstrap_mean(values, seed=7)
    assert bootstrap_mean(values, seed=7) != bootstrap_mean(values, seed=8)
    groups = [i // 4 for i in range(64)]
    first = paired_bootstrap_difference(values + 1, values * 0.5, groups=groups, seed=3)
    assert first == paired_bootstrap_difference(values + 1, values * 0.5, groups=groups, seed=3)


def test_to_dict_and_excludes_zero() -> None:
    estimate = Estimate(mean=1.0, ci_low=0.5, ci_high=1.5, n=10)
    assert estimate.to_dict() == {"mean": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n": 10}
    assert estimate.excludes_zero()
    assert Estimate(mean=-1.0, ci_low=-1.5, ci_high=-0.5, n=10).excludes_zero()
    assert not Estimate(mean=0.2, ci_low=-0.1, ci_high=0.5, n=10).excludes_zero()
    # An interval that touches zero does not exclude it.
    assert not Estimate(mean=0.2, ci_low=0.0, ci_high=0.5, n=10).excludes_zero()


def test_paired_difference_of_shifted_values_is_exactly_the_shift() -> None:
    before = np.random.default_rng(3).integers(-5, 5, size=50).astype(float)
    estimate = paired_bootstrap_difference(before + 1.0, before)
    assert estimate == Estimate(mean=1.0, ci_low=1.0, ci_high=1.0, n=50)
    grouped = paired_bootstrap_difference(before + 1.0, before, groups=[i // 5 for i in range(50)])
    assert grouped == Estimate(mean=1.0, ci_low=1.0, ci_high=1.0, n=10)


def test_paired_difference_mean_is_difference_of_means() -> None:
    after, before = [3.0, 5.0, 4.0, 8.0], [1.0, 1.0, 2.0, 2.0]
    estimate = paired_bootstrap_difference(after, before)
    assert estimate.mean == pytest.approx(np.mean(after) - np.mean(before))
    # Unequal group sizes: the mean is still over rows, not an average of per-prompt means.
    grouped = paired_bootstrap_difference(after, before, groups=["a", "a", "a", "b"])
    assert grouped.mean == pytest.approx(3.5)
    assert grouped.n == 2


def test_cluster_bootstrap_is_wider_when_samples_within_a_prompt_are_copies() -> None:
    # 20 prompts, each with 8 identical samples: only 20 independent differences, not 160.
    per_prompt = np.random.default_rng(4).normal(size=20)
    differences = np.repeat(per_prompt, 8)
    groups = np.repeat(np.arange(20), 8).tolist()
    before = np.zeros_like(differences)
    rows = paired_bootstrap_difference(differences, before)
    clusters = paired_bootstrap_difference(differences, before, groups=groups)
    assert rows.mean == pytest.approx(clusters.mean)
    assert (rows.n, clusters.n) == (160, 20)
    rows_width, clusters_width = rows.ci_high - rows.ci_low, clusters.ci_high - clusters.ci_low
    # Copies shrink the row bootstrap's standard error by sqrt(8) ~ 2.8; demand at least 2x.
    assert clusters_width > 2 * rows_width
    # With equal group sizes, resampling prompts is a plain bootstrap of the per-prompt means; the
    # same seed draws the same prompt indices, so the intervals agree to rounding.
    plain = bootstrap_mean(per_prompt)
    assert (clusters.ci_low, clusters.ci_high) == pytest.approx((plain.ci_low, plain.ci_high), abs=1e-12)


def test_groups_may_be_any_hashable_labels() -> None:
    after, before = [1.0, 2.0, 3.0, 5.0], [0.0, 0.0, 1.0, 1.0]
    by_text = paired_bootstrap_difference(after, before, groups=["p1", "p1", "p2", "p2"])
    by_int = paired_bootstrap_difference(after, before, groups=[0, 0, 1, 1])
    assert by_text == by_int


def test_bootstrap_of_256_values_takes_milliseconds() -> None:
    values = np.random.default_rng(5).normal(size=256)
    bootstrap_mean(values)  # warm-up: first call pays numpy's one-off costs
    start = time.perf_counter()
    bootstrap_mean(values)
    paired_bootstrap_difference(values, values[::-1], groups=[i // 2 for i in range(256)])
    assert time.perf_counter() - start < 0.5  # generous bound for loaded CI machines


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean([])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_difference([], [])


def test_mismatched_lengths_raise_with_both_lengths() -> None:
    with pytest.raises(ValueError, match=r"after has 3 values but before has 2"):
        paired_bootstrap_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"groups has 1 entries but there are 2"):
        paired_bootstrap_difference([1.0, 2.0], [1.0, 2.0], groups=["a"])


def test_bad_settings_and_non_finite_values_raise() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_mean([1.0, float("nan")])


def test_win_rate_pairs_samples_by_prompt_and_counts_ties_half() -> None:
    # Prompt a: policy [2, 0] vs baseline [1, 1] -> pairs 2>1, 2>1, 0<1, 0<1 -> 2/4 = 0.5.
    # Prompt b: policy [3, 3] vs baseline [3, 1] -> tie, win, tie, win -> (0.5 + 1 + 0.5 + 1) / 4 = 0.75.
    estimate = win_rate([2.0, 0.0, 3.0, 3.0], [1.0, 1.0, 3.0, 1.0], groups=["a", "a", "b", "b"])
    assert estimate.mean == pytest.approx(0.625) and estimate.n == 2
    assert estimate.ci_low <= 0.625 <= estimate.ci_high
    # Against itself, always exactly one half; float noise below the tolerance is a tie.
    values = np.random.default_rng(6).normal(size=12)
    groups = [i // 3 for i in range(12)]
    assert win_rate(values, values, groups) == Estimate(mean=0.5, ci_low=0.5, ci_high=0.5, n=4)
    assert win_rate(values + 1e-9, values, groups).mean == 0.5


def test_bootstrap_ratio_weighs_rows_by_their_denominator() -> None:
    # Unequal lengths: 9 over 3 tokens and 1 over 1 token -> 10 / 4 = 2.5, while the mean of ratios is 2.
    estimate = bootstrap_ratio([9.0, 1.0], [3.0, 1.0])
    assert estimate.mean == pytest.approx(2.5) and estimate.n == 2
    assert 1.0 <= estimate.ci_low <= 2.5 <= estimate.ci_high <= 3.0
    grouped = bootstrap_ratio([9.0, 1.0, 4.0], [3.0, 1.0, 2.0], groups=["p", "p", "q"])
    assert grouped.mean == pytest.approx(14.0 / 6.0) and grouped.n == 2
    with pytest.raises(ValueError, match="denominators must all be > 0"):
        bootstrap_ratio([1.0], [0.0])
