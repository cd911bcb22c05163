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


CLUSTERED_TEST = "clustered McNemar (Durkalski et al. 2003)"
CLUSTERED_INTERVAL = "cluster-robust Wald (ratio estimator, Obuchowski 1998)"


def clustered_paired_comparison(
    base: np.ndarray, other: np.ndarray, clusters: np.ndarray, confidence: float = 0.95
) -> dict:
    """Paired binary comparison when pairs come in correlated clusters (images of one prompt).

    Per cluster k, b_k = pairs flagged under `base` only and c_k = under `other` only. The test
    is Durkalski et al. (2003, Stat Med 22:1417): X2 = (sum b_k - sum c_k)^2 / sum (b_k - c_k)^2,
    chi-square with 1 df; with one pair per cluster it is the ordinary McNemar chi2 (no
    continuity correction). difference = rate(other) - rate(base), whose interval treats it as a
    ratio of cluster totals (Obuchowski 1998, Biometrics 54:1145): with e_k = c_k - b_k and n_k
    pairs, var = K/(K-1) * sum (e_k - d n_k)^2 / N^2. Per-image McNemar would treat a prompt's
    10 images as 10 independent pairs and overstate the evidence.
    """
    base = np.asarray(base, dtype=bool)
    other = np.asarray(other, dtype=bool)
    clusters = np.asarray(clusters)
    if not base.shape == other.shape == clusters.shape:
        raise ValueError(
            f"paired vectors differ in length: {base.shape}, {other.shape}, {clusters.shape}"
        )
    n = int(base.size)
    _, code = np.unique(clusters, return_inverse=True)
    k = int(code.max()) + 1 if n else 0
    b_k = np.bincount(code, weights=base & ~other, minlength=k)
    c_k = np.bincount(code, weights=~base & other, minlength=k)
    n_k = np.bincount(code, minlength=k).astype(float)
    b, c = int(b_k.sum()), int(c_k.sum())
    nan = float("nan")
    out = {
        "n_pairs": n,
        "n_clusters": k,
        "rate_baseline": float(base.mean()) if n else nan,
        "rate_config": float(other.mean()) if n else nan,
        "difference": (c - b) / n if n else nan,
        "ci_low": nan,
        "ci_high": nan,
        "b": b,
        "c": c,
        "chi2": nan,
        "p_value": nan,
    }
    if not n:
        return out
    denominator = float(np.sum((b_k - c_k) ** 2))
    chi2 = (b - c) ** 2 / denominator if denominator else 0.0
    out["chi2"] = chi2
    out["p_value"] = float(special.chdtrc(1, chi2)) if denominator else 1.0  # chi2(1).sf
    if k > 1:
        e_k = c_k - b_k
        var = k / (k - 1) * float(np.sum((e_k - out["difference"] * n_k) ** 2)) / n**2
        half = float(special.ndtri(0.5 + confidence / 2)) * math.sqrt(var)
        out["ci_low"] = max(-1.0, out["difference"] - half)
        out["ci_high"] = min(1.0, out["difference"] + half)
    return out
