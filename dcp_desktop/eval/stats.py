"""The statistics dcp-eval reports, in NumPy (scipy is no dependency): paired comparisons of two methods
on the same questions, and rank correlation.

Outcomes are per question, in one fixed question order, 1 for a right answer and 0 for a wrong one (the
`random` baseline averages several seeds, so its outcomes may be fractions).
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000


def paired_difference(reference, other, *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> tuple[float, tuple[float, float]]:
    """mean(other - reference) over the questions, and its 95% percentile bootstrap interval (the
    questions resampled with replacement, both methods' outcomes together)."""
    difference = np.asarray(other, dtype=np.float64) - np.asarray(reference, dtype=np.float64)  # (n,)
    if len(difference) == 0:
        return math.nan, (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # blocks keep memory at 1000 × n
        picks = rng.integers(0, len(difference), size=(min(1000, resamples - start), len(difference)))
        means[start:start + len(picks)] = difference[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(difference.mean()), (float(low), float(high))


def mcnemar_p(reference, other) -> float:
    """Two-sided exact McNemar test: of the questions exactly one method got right (b: only the
    reference, c: only the other), is the split b : c further from even than chance allows? The p-value
    is 2·P(Binomial(b + c, ½) <= min(b, c)), at most 1. Fractional outcomes (averaged seeds) count
    their shares of discordance, rounded to whole questions."""
    reference, other = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    b = int(round(float(np.sum(reference * (1 - other)))))
    c = int(round(float(np.sum((1 - reference) * other))))
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (ties get their mean rank, as scipy.stats.spearmanr); None when
    either side is constant or there are fewer than 3 points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def spearman_gap(x, x_reference, y, *, resamples: int = 2_000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """ρ(x, y) − ρ(x_reference, y) over the same points, and its 95% percentile bootstrap interval (the
    points resampled with replacement, both correlations on the same resample): is one predictor of y
    really better than another, or within noise? NaN where a correlation is undefined (the interval also
    when over 5% of the resamples have a constant side: too few points)."""
    x, x_reference, y = (np.asarray(v, dtype=np.float64) for v in (x, x_reference, y))

    def gap(pick) -> float:
        ours, theirs = spearman(x[pick], y[pick]), spearman(x_reference[pick], y[pick])
        return math.nan if ours is None or theirs is None else ours - theirs

    rng = np.random.default_rng(seed)
    gaps = np.array([gap(rng.integers(0, len(y), size=len(y))) for _ in range(resamples)])
    observed = gap(np.arange(len(y)))
    if math.isnan(observed) or np.isnan(gaps).mean() > 0.05:
        return observed, (math.nan, math.nan)
    low, high = np.nanpercentile(gaps, [2.5, 97.5])
    return observed, (float(low), float(high))


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, group, count = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / count)[group]  # tied values share their mean rank
