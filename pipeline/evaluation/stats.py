"""Bootstrap confidence intervals for evaluation metrics: means, and paired before/after differences.

Pure numpy and deterministic given `seed`, so a report can be regenerated with identical numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Resampled index matrices are built in chunks of at most this many entries (~32 MiB of int64),
# so a large eval set costs time, not memory.
_MAX_CHUNK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided confidence interval; `n` counts the independent units resampled."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    samples: int | None = None  # the values behind it, when they are more than the units (samples per prompt)

    def to_dict(self) -> dict:
        counts = {"n": self.n} if self.samples is None else {"n": self.n, "samples": self.samples}
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, **counts}

    @classmethod
    def from_dict(cls, data: dict) -> Estimate:
        samples = data.get("samples")
        return cls(
            mean=float(data["mean"]),
            ci_low=float(data["ci_low"]),
            ci_high=float(data["ci_high"]),
            n=int(data.get("n", 0)),
            samples=None if samples is None else int(samples),
        )

    def excludes_zero(self) -> bool:
        """True when the whole interval lies strictly on one side of zero."""
        return self.ci_low > 0.0 or self.ci_high < 0.0


def _check_settings(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty: cannot estimate a mean from no values")
    n_bad = int(np.count_nonzero(~np.isfinite(array)))
    if n_bad:
        # A NaN reward is an upstream bug; a NaN interval would hide it in the report.
        raise ValueError(f"{name} has {n_bad} non-finite values out of {array.size}")
    return array


def _percentile_interval(resampled: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(low), float(high)


def _resampled_ratio_means(
    sums: np.ndarray, counts: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of `n_resamples` bootstrap draws of units, each unit carrying a sum and a count.

    A draw picks len(sums) units with replacement; its mean is sum(sums[draw]) / sum(counts[draw]).
    With counts all 1 this is the plain bootstrap of the mean; with per-prompt sums and sizes it is
    the cluster bootstrap, which stays correct when prompts have different numbers of samples.
    """
    n_units = sums.size
    rows_per_chunk = max(1, _MAX_CHUNK_ENTRIES // n_units)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_resamples)
        draws = rng.integers(0, n_units, size=(stop - start, n_units))
        means[start:stop] = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return means


def _estimate(
    sums: np.ndarray, counts: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> Estimate:
    n_units = sums.size
    per_unit = sums / counts
    # When every unit has the same mean, so has every resample: return that value itself rather
    # than a float-rounded sum, so a constant input gives exactly its value and a zero-width interval.
    if np.all(per_unit == per_unit[0]):
        value = float(per_unit[0])
        return Estimate(mean=value, ci_low=value, ci_high=value, n=n_units)
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    resampled = _resampled_ratio_means(sums, counts, n_resamples, rng)
    low, high = _percentile_interval(resampled, confidence)
    return Estimate(mean=mean, ci_low=low, ci_high=high, n=n_units)


def bootstrap_mean(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    groups: Sequence[object] | None = None,
) -> Estimate:
    """Mean of `values` with a percentile-bootstrap confidence interval.

    The interval is the [(1-c)/2, (1+c)/2] quantiles of the means of `n_resamples` resamples of
    len(values) values drawn with replacement. With `groups` (e.g. the prompt of each sample) whole
    groups are resampled (cluster bootstrap) and `n` is the number of groups. One value gives a
    zero-width interval; none raises.
    """
    _check_settings(confidence, n_resamples)
    return _estimate(*_unit_sums(_as_array(values, "values"), groups), confidence, n_resamples, seed)


def _unit_sums(values: np.ndarray, groups: Sequence[object] | None) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) per resampling unit: each row alone, or each group."""
    if groups is None:
        return values, np.ones_like(values)
    codes = _group_codes(groups, values.size)
    n_groups = int(codes.max()) + 1
    sums = np.bincount(codes, weights=values, minlength=n_groups)
    return sums, np.bincount(codes, minlength=n_groups).astype(np.float64)


def _group_codes(groups: Sequence[object], n_rows: int) -> np.ndarray:
    if len(groups) != n_rows:
        raise ValueError(f"groups has {len(groups)} entries but there are {n_rows} paired rows")
    index: dict[object, int] = {}
    return np.array([index.setdefault(group, len(index)) for group in groups], dtype=np.int64)


def paired_bootstrap_difference(
    after: Sequence[float],
    before: Sequence[float],
    groups: Sequence[object] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """mean(after) - mean(before) for two policies sampled on the same prompts, with a bootstrap CI.

    Row i of `after` and row i of `before` come from the same prompt, so the bootstrap resamples
    the per-row differences after[i] - before[i] together (a paired bootstrap), which removes the
    prompt-to-prompt variance both policies share. With `groups` (the prompt of each row) it
    resamples whole prompts instead (cluster bootstrap): several samples of one prompt are not
    independent, and treating them as such would make the interval too narrow. `n` is then the
    number of prompts; without groups it is the number of pairs.
    """
    _check_settings(confidence, n_resamples)
    if len(after) != len(before):
        raise ValueError(f"after has {len(after)} values but before has {len(before)}: they must be paired")
    differences = _as_array(after, "after") - _as_array(before, "before")
    return _estimate(*_unit_sums(differences, groups), confidence, n_resamples, seed)


def bootstrap_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    groups: Sequence[object] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """sum(numerators) / sum(denominators) with a bootstrap CI, e.g. NLL per token over samples of
    different lengths (each sample weighs by its token count).

    Resamples rows, or whole groups with `groups` (`n` is then the number of groups), exactly like
    `bootstrap_mean`, which is the special case of all denominators 1.
    """
    _check_settings(confidence, n_resamples)
    top = _as_array(numerators, "numerators")
    bottom = _as_array(denominators, "denominators")
    if top.size != bottom.size:
        raise ValueError(f"numerators has {top.size} values but denominators has {bottom.size}")
    if np.any(bottom <= 0):
        raise ValueError("denominators must all be > 0")
    sums, _ = _unit_sums(top, groups)
    counts, _ = _unit_sums(bottom, groups)
    return _estimate(sums, counts, confidence, n_resamples, seed)


def win_rate(
    scores: Sequence[float],
    baseline_scores: Sequence[float],
    groups: Sequence[object],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    tie_tolerance: float = 1e-6,
) -> Estimate:
    """How often a policy beats the baseline, paired by prompt; ties count half.

    For prompt p with policy samples a_1..a_k and baseline samples b_1..b_m (rows whose group is p),
    win(p) = mean over all (i, j) of [a_i > b_j] + 0.5 [|a_i - b_j| <= tie_tolerance]; the win rate is
    the mean of win(p) over prompts, with a bootstrap CI that resamples prompts (`n` = prompts). A
    policy against itself scores exactly 0.5. The tolerance keeps float noise of a learned scorer
    from turning equal scores of equal completions into wins or losses.
    """
    _check_settings(confidence, n_resamples)
    a, b = _as_array(scores, "scores"), _as_array(baseline_scores, "baseline_scores")
    if a.size != b.size:
        raise ValueError(f"scores has {a.size} values but baseline_scores has {b.size}: they must be paired")
    codes = _group_codes(groups, a.size)
    per_prompt = []
    for code in range(int(codes.max()) + 1):
        diff = a[codes == code][:, None] - b[codes == code][None, :]
        per_prompt.append(float(np.mean(np.where(np.abs(diff) <= tie_tolerance, 0.5, diff > 0))))
    return bootstrap_mean(per_prompt, confidence=confidence, n_resamples=n_resamples, seed=seed)
