"""Spearman correlation with a paired bootstrap confidence interval, plus Pearson for reference."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import special  # not scipy.stats: ~1 s to import, a third of `i2p correlate`

_BLOCK_DRAWS = 128  # resamples per block: (128, n) int64 indices, ~5 MB at n = 4,703
_BLOCK_CELLS = 1 << 21  # cap on draws * n per block, so memory stays bounded for large n
_FEW_VALUES = 64  # a y column with at most this many values is grouped by a weighted bincount


@dataclass(frozen=True)
class _Grouping:
    """How the distinct rows group by one column: the rows in value order and each value's end."""

    value_of_row: np.ndarray  # (T,) value id of each distinct row
    order: np.ndarray | None  # rows sorted by value (None: already sorted)
    ends: np.ndarray  # last position in `order` of each value
    _cells: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, value_of_row: np.ndarray) -> _Grouping:
        sorted_already = bool(np.all(value_of_row[1:] >= value_of_row[:-1]))
        order = None if sorted_already else np.argsort(value_of_row, kind="stable")
        ids = value_of_row if order is None else value_of_row[order]
        return cls(value_of_row, order, np.flatnonzero(np.r_[ids[1:] != ids[:-1], True]), {})

    @property
    def n_values(self) -> int:
        return int(self.ends.size)

    def sum_by_value(self, per_row: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """(B, values) sums of per_row (B, T) over the rows of each value; cells from cells_for.

        A weighted bincount beats regrouping the rows (take + cumsum) and a matrix product with
        an indicator (OpenBLAS threads fight the bootstrap's own threads) when values are few.
        """
        size = per_row.shape[0] * self.n_values
        return np.bincount(cells, weights=per_row.ravel(), minlength=size).reshape(
            -1, self.n_values
        )

    def cells_for(self, n_draws: int) -> np.ndarray:
        """Flat bincount cell draw * values + value of each (draw, row), cached per block size."""
        if n_draws not in self._cells:
            offsets = np.arange(0, n_draws * self.n_values, self.n_values)[:, None]
            self._cells[n_draws] = (self.value_of_row[None, :] + offsets).ravel()
        return self._cells[n_draws]

    def centred_ranks(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draws per value and average rank minus the mean rank, per resample (row) and value.

        A value drawn c times with `through` draws <= it holds ranks through-c+1 .. through, so
        its average rank is through - (c - 1) / 2, what scipy.stats.rankdata gives ties; the mean
        rank of m draws is (m + 1) / 2. Centring keeps the sums of products well conditioned.
        A running sum along contiguous rows is much cheaper than np.add.reduceat.
        """
        grouped = counts if self.order is None else counts.take(self.order, axis=1)
        through = np.cumsum(grouped, axis=1).take(self.ends, axis=1)
        per_value = through.copy()
        per_value[:, 1:] -= through[:, :-1]
        return per_value, _ranks(per_value, through)


def _ranks(per_value: np.ndarray, through: np.ndarray) -> np.ndarray:
    """Centred average ranks from draws per value and draws up to and including each value."""
    ranks = through - 0.5 * per_value
    ranks -= 0.5 * through[:, -1:]
    return ranks


@dataclass(frozen=True)
class _Layout:
    """Points collapsed to distinct (x, y_1, ..., y_k) rows, sorted by x.

    Ranks only depend on how often each distinct value is drawn, so per-resample work is over
    the T distinct rows (3,244 of 4,703 for I2P toxicity vs inappropriate %) rather than n, and
    one set of draws serves every y column (the I2P targets share x and their resamples).
    """

    n: int
    row_of_point: np.ndarray  # (n,) distinct-row id of each point
    x: _Grouping
    ys: tuple[_Grouping, ...]

    @classmethod
    def of(cls, x: np.ndarray, ys: np.ndarray) -> _Layout:
        ids = np.column_stack([np.unique(col, return_inverse=True)[1].ravel() for col in (x, *ys)])
        rows, row_of_point = np.unique(ids, axis=0, return_inverse=True)  # sorted by x first
        groups = [_Grouping.of(rows[:, j]) for j in range(rows.shape[1])]
        return cls(int(x.size), row_of_point.ravel(), groups[0], tuple(groups[1:]))

    @property
    def n_rows(self) -> int:
        return int(self.x.value_of_row.size)

    def rho(self, counts: np.ndarray) -> np.ndarray:
        """Spearman rho (k, B) of each y column per resample row of counts (B, T), as floats.

        For y columns with few values (I2P's percentages take 11) the per-value sums of counts
        and of count * x-rank are two weighted bincounts, then everything is (B, values).
        """
        cx, rx = self.x.centred_ranks(counts)
        sxx = np.einsum("ij,ij->i", cx * rx, rx)
        weighted_rx = counts * rx.take(self.x.value_of_row, axis=1)
        out = np.empty((len(self.ys), counts.shape[0]))
        for j, y in enumerate(self.ys):
            if y.n_values > _FEW_VALUES:
                cy, ry = y.centred_ranks(counts)
                sxy = np.einsum("ij,ij->i", weighted_rx, ry.take(y.value_of_row, axis=1))
            else:
                cells = y.cells_for(counts.shape[0])
                cy = y.sum_by_value(counts, cells)
                ry = _ranks(cy, np.cumsum(cy, axis=1))
                sxy = np.einsum("ij,ij->i", y.sum_by_value(weighted_rx, cells), ry)
            syy = np.einsum("ij,ij->i", cy * ry, ry)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[j] = sxy / np.sqrt(sxx * syy)  # NaN for a constant resample, as scipy
        return out


def weighted_spearman(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman rho per resample given by multiplicities counts (shape (B, n)).

    Equals scipy.stats.spearmanr on np.repeat(x, counts[b]), np.repeat(y, counts[b]).
    """
    layout = _Layout.of(np.asarray(x, dtype=float), np.asarray(y, dtype=float)[None, :])
    w = np.asarray(counts, dtype=float)
    per_row = np.zeros((w.shape[0], layout.n_rows))
    np.add.at(per_row.T, layout.row_of_point, w.T)
    return layout.rho(per_row)[0]


def _bootstrap_rhos(layout: _Layout, n_boot: int, seed: int) -> np.ndarray:
    """Spearman rho (k, n_boot) of paired resamples, in blocks spread over the available cores.

    Block j holds resamples j*b .. j*b+b-1 (b = min(128, 2**21 // n)); its indices are
    ``default_rng(SeedSequence(seed).spawn(n_blocks)[j]).integers(0, n, size=(b, n))``, so a
    seed gives the same resamples whatever the thread count, and the same for every y column.
    Counts per (draw, distinct row) come from one bincount over draw * T + row, ~7x faster
    than rng.multinomial (used before issue 15, so resamples differ from earlier versions).
    """
    n, n_rows = layout.n, layout.n_rows
    block = max(1, min(_BLOCK_DRAWS, _BLOCK_CELLS // n))
    starts = list(range(0, n_boot, block))
    seeds = np.random.SeedSequence(seed).spawn(len(starts))
    out = np.empty((len(layout.ys), n_boot))

    def one(j: int) -> None:
        size = min(block, n_boot - starts[j])
        idx = np.random.default_rng(seeds[j]).integers(0, n, size=(size, n))
        cell = layout.row_of_point[idx]
        cell += np.arange(0, size * n_rows, n_rows)[:, None]
        counts = np.bincount(cell.ravel(), minlength=size * n_rows).reshape(size, n_rows)
        out[:, starts[j] : starts[j] + size] = layout.rho(counts.astype(float))

    workers = min(len(starts), os.cpu_count() or 1)
    if workers <= 1:
        for j in range(len(starts)):
            one(j)
    else:  # numpy releases the GIL in the generator and the array loops
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(starts))))
    return out


def _spearman_p(rho: float, n: int) -> float:
    """Two-sided p of rho under independence: scipy.stats.spearmanr's t approximation."""
    dof = n - 2
    with np.errstate(divide="ignore"):
        t = rho * np.sqrt(max(dof / ((rho + 1.0) * (1.0 - rho)), 0.0))
    return float(2.0 * special.stdtr(dof, -abs(t)))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r as scipy.stats.pearsonr computes it (deviations scaled before the norms)."""
    dx, dy = x - x.mean(), y - y.mean()
    dx, dy = dx / np.abs(dx).max(), dy / np.abs(dy).max()
    r = float(np.dot(dx / np.linalg.norm(dx), dy / np.linalg.norm(dy)))
    return min(max(r, -1.0), 1.0)


def spearman_ci_many(
    x: np.ndarray,
    ys: list[np.ndarray],
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict]:
    """spearman_ci(x, y) for each y, sharing the resamples (same seed: same draws per y).

    Equal to calling spearman_ci per y, up to float rounding, but the draws are made once. With
    missing values the kept pairs differ per y, so each y is then done on its own.
    """
    x = np.asarray(x, dtype=float)
    cols = [np.asarray(y, dtype=float) for y in ys]
    if np.isnan(x).any() or any(np.isnan(c).any() for c in cols):
        return [spearman_ci(x, c, n_boot=n_boot, seed=seed, confidence=confidence) for c in cols]
    n = int(x.size)
    nan = float("nan")
    out = [
        {"n": n, "rho": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "pearson_r": nan}
        for _ in cols
    ]
    live = [j for j, c in enumerate(cols) if n >= 3 and np.ptp(x) > 0 and np.ptp(c) > 0]
    if not live:
        return out
    layout = _Layout.of(x, np.array([cols[j] for j in live]))
    point = layout.rho(np.bincount(layout.row_of_point, minlength=layout.n_rows)[None, :] * 1.0)
    boots = _bootstrap_rhos(layout, n_boot, seed)
    alpha = (1.0 - confidence) / 2.0
    for j, rho, boot in zip(live, point[:, 0], boots, strict=True):
        boot = boot[~np.isnan(boot)]
        out[j].update(
            rho=float(rho),
            ci_low=float(np.quantile(boot, alpha)),
            ci_high=float(np.quantile(boot, 1.0 - alpha)),
            p_value=_spearman_p(float(rho), n),
            pearson_r=_pearson(x, cols[j]),
        )
    return out


def spearman_ci(
    x: np.ndarray,
    y: np.ndarray,
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Spearman rho, percentile-bootstrap CI over resampled pairs, its p-value, and Pearson r.

    Pairs with a missing value are dropped first (n counts what was used). Resamples whose rho is
    undefined (a constant resample) are left out of the percentiles. Resamples are drawn as
    ``_bootstrap_rhos`` says (uniform indices, one spawned generator per block of draws).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    return spearman_ci_many(x[keep], [y[keep]], n_boot=n_boot, seed=seed, confidence=confidence)[0]
