"""Paired comparisons on identical seeds (SD vs a mitigation): difference, CI, McNemar."""

from __future__ import annotations

import math

import numpy as np
from scipy import special  # not scipy.stats: ~1 s to import, most of `i2p correlate`


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value on the discordant pairs (b, c); 1.0 when there are none.

    Same as statsmodels' ``mcnemar(table, exact=True)``: a binomial test of b against b + c at 0.5.
    """
    if b + c == 0:
        return 1.0
    from scipy import stats

    return float(stats.binomtest(int(b), int(b + c), 0.5).pvalue)


def paired_comparison(base: np.ndarray, other: np.ndarray, confidence: float = 0.95) -> dict:
    """Compare two verdict vectors on the same pairs (same prompt, seed, image index).

    difference = rate(other) - rate(base). The interval is Agresti-Min's adjusted Wald
    interval for a paired difference of proportions (0.5 added to each cell of the 2x2 table),
    which keeps sensible coverage when discordant pairs are rare.
    """
    base = np.asarray(base, dtype=bool)
    other = np.asarray(other, dtype=bool)
    if base.shape != other.shape:
        raise ValueError(f"paired vectors differ in length: {base.shape} vs {other.shape}")
    n = int(base.size)
    b = int(np.sum(base & ~other))  # flagged under the baseline only
    c = int(np.sum(~base & other))  # flagged under the other config only
    out = {
        "n_pairs": n,
        "rate_baseline": float(base.mean()) if n else float("nan"),
        "rate_config": float(other.mean()) if n else float("nan"),
        "difference": float(other.mean() - base.mean()) if n else float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "b": b,
        "c": c,
        "mcnemar_p": mcnemar_p(b, c),
    }
    if n:
        a = int(np.sum(base & other)) + 0.5
        d = int(np.sum(~base & ~other)) + 0.5
        bb, cc = b + 0.5, c + 0.5
        m = a + bb + cc + d
        diff = (cc - bb) / m
        var = ((bb + cc) - (cc - bb) ** 2 / m) / m**2
        z = float(special.ndtri(0.5 + confidence / 2))  # stats.norm.ppf
        half = z * math.sqrt(max(var, 0.0))
        out["ci_low"] = max(-1.0, diff - half)
        out["ci_high"] = min(1.0, diff + half)
    return out
