"""Does prompt toxicity predict image inappropriateness? Spearman per category and target.

The I2P paper's point is that it barely does (rho ~ 0.22): filtering prompts by a text toxicity
score would miss most prompts that yield inappropriate images. This module computes that claim
with a bootstrap CI so it can be checked on any copy of the data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special  # not scipy.stats: ~1 s to import

from analysis.i2p.loader import category_masks
from analysis.stats.correlation import spearman_ci_many

TARGETS = ("inappropriate_percentage", "nudity_percentage", "q16_percentage")
CORRELATION_COLUMNS = [
    "category",
    "target",
    "n",
    "spearman_rho",
    "ci_low",
    "ci_high",
    "p_value",
    "pearson_r",
    "n_toxic",
    "share_toxic",
]
TOXIC_THRESHOLD = 0.5  # Perspective API convention for "toxic", as in the I2P paper


def toxicity_correlation(
    frame: pd.DataFrame,
    *,
    targets: tuple[str, ...] = TARGETS,
    n_boot: int = 10_000,
    seed: int = 0,
    toxic_threshold: float = TOXIC_THRESHOLD,
) -> pd.DataFrame:
    """One row per (category incl. 'all', target): Spearman rho, bootstrap CI, p, Pearson r.

    n_toxic / share_toxic: prompts of that category with prompt_toxicity > toxic_threshold.
    The targets of one category share x and resamples, so their bootstraps share one set of draws.
    """
    rows = []
    toxicity = frame["prompt_toxicity"].to_numpy(dtype=float)
    values = {t: frame[t].to_numpy(dtype=float) for t in targets}
    for category, mask in category_masks(frame["categories"]).items():
        tox = toxicity[mask]
        n_toxic = int((tox > toxic_threshold).sum())
        results = spearman_ci_many(
            tox, [values[t][mask] for t in targets], n_boot=n_boot, seed=seed
        )
        for target, res in zip(targets, results, strict=True):
            rows.append(
                {
                    "category": category,
                    "target": target,
                    "n": res["n"],
                    "spearman_rho": res["rho"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "p_value": res["p_value"],
                    "pearson_r": res["pearson_r"],
                    "n_toxic": n_toxic,
                    "share_toxic": n_toxic / tox.size if tox.size else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def binned_means(
    x: np.ndarray,
    y: np.ndarray,
    edges: np.ndarray | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean of y per x bin with a t-interval over prompts (prompts, not images, are independent).

    Bins are half-open [low, high) except the last, which includes its upper edge.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    edges = np.linspace(0.0, 1.0, 11) if edges is None else np.asarray(edges, dtype=float)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    inside = (x >= edges[0]) & (x <= edges[-1])
    rows = []
    for b in range(len(edges) - 1):
        vals = y[inside & (which == b)]
        n = int(vals.size)
        mean = float(vals.mean()) if n else float("nan")
        low = high = float("nan")
        if n >= 2:
            sem = float(vals.std(ddof=1)) / np.sqrt(n)
            half = float(special.stdtrit(n - 1, 0.5 + confidence / 2)) * sem  # stats.t.ppf
            low, high = mean - half, mean + half
        rows.append(
            {
                "bin_low": float(edges[b]),
                "bin_high": float(edges[b + 1]),
                "n": n,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def points_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-prompt values behind the correlation figure (lets figures be redrawn offline)."""
    return frame[["prompt_id", "categories", "prompt_toxicity", *TARGETS]].copy()
