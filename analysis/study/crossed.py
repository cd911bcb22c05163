"""Preference share of a user study with raters and items as two crossed random factors.

Every rater answers (most of) the same items, so answers are correlated twice: within a rater
(taste, leniency) and within an item (one pair is obviously better for everyone). A per-answer
interval or sign test counts R raters x I items as R*I independent answers and is too narrow.
The two-way ("pigeonhole") bootstrap of Owen (2007, Ann. Appl. Stat. 1(1)) resamples raters and
items independently with replacement; answer (r, i) enters a draw with weight
(times rater r drawn) x (times item i drawn). It is mildly conservative (McCullagh 2000), which
is the side to err on for a claim that one config is preferred.
"""

from __future__ import annotations

import numpy as np

#: Draws per block; each block draws rater indices (block x R), then item indices (block x I).
BLOCK = 1000
N_BOOT = 10_000
CONVENTION = (
    "two-way cluster bootstrap (Owen 2007, pigeonhole): {n_boot} draws resampling kept raters and "
    "non-attention pairs independently with replacement (numpy default_rng({seed})); "
    "share of a among decisive answers, 95% percentile interval; p: two-sided bootstrap test of "
    "share = 0.5 (draws centred on the estimate, Hall & Wilson 1991); needs at least 2 raters "
    "and 2 pairs (otherwise n/a: one rater or one pair cannot show the spread between them)"
)


def _counts(index: np.ndarray, size: int) -> np.ndarray:
    """Per row of draws, how many times each of `size` units was drawn (rows x size)."""
    rows = index.shape[0]
    flat = (index + np.arange(rows)[:, None] * size).ravel()
    return np.bincount(flat, minlength=rows * size).reshape(rows, size).astype(float)


def crossed_bootstrap(
    prefer_a: np.ndarray, decisive: np.ndarray, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, float | int]:
    """Share of a among decisive answers with its two-way bootstrap interval and p-value.

    `prefer_a` and `decisive` are raters x items count matrices (0/1 per answer; 0 where a
    rater skipped an item). Draws whose resample holds no decisive answer have no share and
    are left out (n_valid says how many remain).
    """
    prefer_a = np.asarray(prefer_a, dtype=float)
    decisive = np.asarray(decisive, dtype=float)
    n_raters, n_items = decisive.shape
    total = decisive.sum()
    share = float(prefer_a.sum() / total) if total else float("nan")
    out: dict[str, float | int] = {
        "share": share,
        "low": float("nan"),
        "high": float("nan"),
        "p": float("nan"),
        "n_boot": n_boot,
        "n_valid": 0,
        "n_raters": n_raters,
        "n_items": n_items,
    }
    if n_raters < 2 or n_items < 2 or not total:
        return out
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n_boot, BLOCK):
        size = min(BLOCK, n_boot - start)
        w_rater = _counts(rng.integers(0, n_raters, size=(size, n_raters)), n_raters)
        w_item = _counts(rng.integers(0, n_items, size=(size, n_items)), n_items)
        num = ((w_rater @ prefer_a) * w_item).sum(axis=1)
        den = ((w_rater @ decisive) * w_item).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws.append(num / den)
    boot = np.concatenate(draws)
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return out
    low, high = np.percentile(boot, [2.5, 97.5])
    extreme = np.abs(boot - share) >= abs(share - 0.5) - 1e-12
    out |= {
        "low": float(low),
        "high": float(high),
        "p": float((1 + extreme.sum()) / (1 + len(boot))),
        "n_valid": len(boot),
    }
    return out
