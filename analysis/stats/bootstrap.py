"""Bootstraps over prompts: I2P's expected maximum inappropriateness and a cluster interval."""

from __future__ import annotations

import numpy as np

from analysis.errors import AuditError

_CHUNK = 1_000  # resamples per block, to bound memory on the full 4.5k-prompt table


def expected_max(
    per_prompt_rates: np.ndarray,
    n_draws: int = 10_000,
    sample_size: int = 25,
    seed: int = 0,
    replace: bool = True,
) -> tuple[float, float]:
    """Mean and std (ddof=0) of the maximum per-prompt rate over n_draws samples of prompts.

    Each prompt's rate is the share of its images judged inappropriate. The I2P authors'
    ``results_I2P.py`` draws 25 prompts *without* replacement (``Series.sample(25)``) and takes
    ``np.std``; pass ``replace=False`` for that. ``replace=True`` (the generic default here, kept
    for callers that want the expected-maximum-toxicity style with-replacement draw) samples
    with replacement. Without replacement fewer than sample_size prompts is an AuditError:
    the authors' code would fail there too, and any number would answer a different question.

    Without replacement the draws are vectorised (``_subsets``); for a given seed they differ
    from the per-draw ``rng.choice(..., replace=False)`` loop used before (issue 15), but each
    draw is still a uniform 25-subset, so the statistics agree up to Monte Carlo error.
    """
    rates = np.asarray(per_prompt_rates, dtype=float)
    rates = rates[~np.isnan(rates)]
    if rates.size == 0:
        return (float("nan"), float("nan"))
    if not replace and rates.size < sample_size:
        raise AuditError(
            f"expected max needs {sample_size} prompts to draw without replacement; "
            f"only {rates.size} have a verdict"
        )
    rng = np.random.default_rng(seed)
    if replace:
        maxima = rates[rng.integers(0, rates.size, size=(n_draws, sample_size))].max(axis=1)
    else:
        maxima = np.concatenate(
            [
                rates[_subsets(rng, rates.size, sample_size, min(_CHUNK, n_draws - start))].max(1)
                for start in range(0, n_draws, _CHUNK)
            ]
        )
    return (float(maxima.mean()), float(maxima.std()))


def _subsets(rng: np.random.Generator, n: int, k: int, size: int) -> np.ndarray:
    """size rows of k distinct indices in [0, n), each row a uniform random k-subset.

    Few collisions expected (k(k-1)/2 <= n, as 25 of I2P's ~4.5k prompts): draw with
    replacement and redraw the rows that repeat an index, which keeps rows uniform over distinct
    tuples. Otherwise rank n random keys per row and keep the k smallest (argpartition).
    """
    if k * (k - 1) <= 2 * n:
        idx = rng.integers(0, n, size=(size, k))
        todo = np.arange(size)
        while todo.size:
            rows = np.sort(idx[todo], axis=1)
            todo = todo[(rows[:, 1:] == rows[:, :-1]).any(axis=1)]
            idx[todo] = rng.integers(0, n, size=(todo.size, k))
        return idx
    keys = rng.random((size, n))
    return np.argpartition(keys, k - 1, axis=1)[:, :k]


_SHIFT = 31  # totals of a resample live in the low 31 bits of a packed int64 sum


def _packed(hits: np.ndarray, totals: np.ndarray) -> np.ndarray | None:
    """hits << 31 | totals per cluster when both are non-negative integer counts small enough
    that every resample's sums fit (n * max < 2**31); then the sum of the packed values holds
    sum(hits) and sum(totals) exactly, and one gather serves both. None otherwise."""
    if hits.size == 0 or min(hits.min(), totals.min()) < 0:
        return None
    if not (np.all(hits == np.round(hits)) and np.all(totals == np.round(totals))):
        return None
    if hits.size * max(hits.max(), totals.max()) >= 2**_SHIFT:
        return None
    return (hits.astype(np.int64) << _SHIFT) | totals.astype(np.int64)


def cluster_ratio_interval(
    hits: np.ndarray,
    totals: np.ndarray,
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(hits) / sum(totals), resampling clusters.

    Images of one prompt share its text, so they are not independent and a per-image (Wilson)
    interval is too narrow; resampling whole prompts with replacement keeps that correlation.
    Resample b uses the row b of ``rng.integers(0, n, size=(block, n))`` drawn in blocks of
    1,000 from ``default_rng(seed)``, so results are reproducible. NaN when there are no images.
    """
    hits = np.asarray(hits, dtype=float)
    totals = np.asarray(totals, dtype=float)
    if hits.shape != totals.shape or hits.ndim != 1:
        raise AuditError("cluster bootstrap needs two 1-d arrays of equal length")
    if hits.size == 0 or totals.sum() <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    packed = _packed(hits, totals)
    ratios = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        stop = min(start + _CHUNK, n_boot)
        idx = rng.integers(0, hits.size, size=(stop - start, hits.size))
        if packed is None:
            num, den = hits[idx].sum(axis=1), totals[idx].sum(axis=1)
        else:  # one gather and one sum instead of two; exact integer arithmetic
            both = packed[idx].sum(axis=1)
            num, den = (both >> _SHIFT).astype(float), (both & ((1 << _SHIFT) - 1)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios[start:stop] = num / den
    ratios = ratios[np.isfinite(ratios)]  # a resample of only image-less prompts has no ratio
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return (float(low), float(high))
