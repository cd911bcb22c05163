"""Tests a reviewer asks for beyond per-group rates: multiplicity, heterogeneity, paired configs.

Every estimator here is a statsmodels/scipy call, not a re-derivation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats import contingency_tables, multitest

from analysis.errors import AuditError
from analysis.stats.paired import paired_comparison

MC_RESAMPLES = 20_000  # Monte-Carlo tables for the small-expected p-value: SE <= 0.0036 at p=0.5
MC_SEED = 0  # fixed so a report re-renders with the same p-value
UNTESTABLE = "untestable: no discordant pairs"


def adjust_pvalues(p: pd.Series) -> pd.DataFrame:
    """Holm (family-wise) and Benjamini-Hochberg (FDR) adjusted p-values, indexed like ``p``.

    Holm controls the chance of any false claim among the countries; BH the expected share of
    false claims among those called significant; reporting both lets a reader choose. NaN p-values
    (e.g. an untestable country) stay NaN and are left out of the family size m, so an untestable
    hypothesis neither adds a penalty nor counts as a discovery.
    """
    p = pd.Series(p, dtype=float)
    bad = p.notna() & ((p < 0) | (p > 1))
    if bad.any():
        raise AuditError(
            f"p-values must lie in [0, 1]; got {p[bad].iloc[0]!r} at {p[bad].index[0]!r}"
        )
    out = pd.DataFrame({"p_holm": np.nan, "p_bh": np.nan}, index=p.index, dtype=float)
    known = p.notna().to_numpy()
    if known.any():
        multipletests = multitest.multipletests
        raw = p.to_numpy()[known]
        out.loc[known, "p_holm"] = multipletests(raw, method="holm")[1]
        out.loc[known, "p_bh"] = multipletests(raw, method="fdr_bh")[1]
    return out


def adjust_family(p: pd.Series, testable: pd.Series) -> pd.DataFrame:
    """The family of one correction: testable units only, with their size stated.

    A unit with no variation (e.g. a country with no discordant pairs, whose McNemar p would be
    a conventional 1.0) cannot reject, yet counting it would raise every other Holm p. So it is
    left out: its ``p`` becomes NaN with ``note`` = UNTESTABLE, and ``family_size`` is the
    number of units that were tested. Columns: p, p_holm, p_bh, family_size, note.
    """
    p = pd.Series(p, dtype=float)
    testable = pd.Series(testable, index=p.index).astype(bool)
    kept = p.where(testable)
    out = adjust_pvalues(kept)
    out.insert(0, "p", kept)
    out["family_size"] = int(kept.notna().sum())
    out["note"] = np.where(testable, "", UNTESTABLE)
    return out


def heterogeneity_test(counts: pd.DataFrame, group_col: str, positive_col: str, n_col: str) -> dict:
    """One omnibus test that the positive rate differs across groups (e.g. the 50 countries).

    Pearson chi-square test of homogeneity on the k x 2 (positive, negative) table via
    ``scipy.stats.chi2_contingency(correction=False)``: Yates' correction is for 2x2 only and is
    off for every k so k=2 gives the plain two-proportion test. Rows sharing a group are summed;
    groups with n == 0 carry no information and are dropped (``n_groups_dropped``).

    When any expected count is < 5 the asymptotic p can be off, so the result has
    ``small_expected=True`` and ``p_value_mc``: a Monte-Carlo p from 20,000 tables with the same
    margins (fixed seed); prefer it then. Otherwise ``p_value_mc`` is NaN.

    When every observation is negative or every one positive there is no variation: statistic and
    p_value are NaN with a ``note`` (never 1.0, which a multiplicity correction would count as a
    real, non-significant test).
    """
    missing = [c for c in (group_col, positive_col, n_col) if c not in counts.columns]
    if missing:
        raise AuditError(f"heterogeneity_test: counts lacks column(s) {missing}")
    table = counts.groupby(group_col, sort=True)[[positive_col, n_col]].sum()
    pos = table[positive_col].to_numpy(dtype=float)
    n = table[n_col].to_numpy(dtype=float)
    if np.isnan(pos).any() or np.isnan(n).any():
        raise AuditError("heterogeneity_test: counts contain NA; drop or fill them first")
    if (
        (pos < 0).any()
        or (pos > n).any()
        or (pos != np.round(pos)).any()
        or (n != np.round(n)).any()
    ):
        raise AuditError(
            "heterogeneity_test: need integer counts with 0 <= positive <= n per group"
        )
    keep = n > 0
    pos, n = pos[keep], n[keep]
    k = int(keep.sum())
    if k < 2:
        raise AuditError(f"heterogeneity_test needs >= 2 groups with n > 0, got {k}")
    out: dict = {
        "statistic": float("nan"),
        "dof": k - 1,
        "p_value": float("nan"),
        "p_value_mc": float("nan"),
        "n_groups": k,
        "n_groups_dropped": int((~keep).sum()),
        "n_total": int(n.sum()),
        "n_positive": int(pos.sum()),
        "small_expected": False,
        "method": f"Pearson chi-square test of homogeneity, {k}x2 table, no continuity correction",
        "note": "",
    }
    if pos.sum() == 0 or pos.sum() == n.sum():
        out["note"] = "no variation: every observation has the same outcome; test undefined"
        return out
    observed = np.column_stack([pos, n - pos]).astype(np.int64)
    res = stats.chi2_contingency(observed, correction=False)
    out["statistic"] = float(res.statistic)
    out["p_value"] = float(res.pvalue)
    if (res.expected_freq < 5).any():
        out["small_expected"] = True
        mc = stats.chi2_contingency(
            observed,
            correction=False,
            method=stats.MonteCarloMethod(
                n_resamples=MC_RESAMPLES, rng=np.random.default_rng(MC_SEED)
            ),
        )
        out["p_value_mc"] = float(mc.pvalue)
        out["method"] += f"; Monte-Carlo p from {MC_RESAMPLES} margin-preserving tables"
        out["note"] = "some expected counts < 5: prefer p_value_mc"
    return out


def cochran_q(verdicts: pd.DataFrame) -> dict:
    """Cochran's Q: do >= 2 configs (columns) flag the same items (rows) at different rates?

    The paired omnibus analogue of McNemar (statsmodels ``cochrans_q``): one test before any
    pairwise SD-vs-config comparisons. Items with NA under any config are dropped (complete
    cases, ``n_items`` / ``n_dropped``), since Q needs every config on every item.
    """
    if verdicts.shape[1] < 2:
        raise AuditError(f"cochran_q needs >= 2 config columns, got {verdicts.shape[1]}")
    complete = verdicts.dropna(how="any")
    out: dict = {
        "statistic": float("nan"),
        "dof": int(verdicts.shape[1] - 1),
        "p_value": float("nan"),
        "n_items": len(complete),
        "n_dropped": len(verdicts) - len(complete),
        "note": "",
    }
    x = complete.astype(bool).to_numpy(dtype=int)
    # Q is 0/0 when every complete item has the same verdict under all configs.
    if len(x) == 0 or not (x.min(axis=1) != x.max(axis=1)).any():
        out["note"] = "no item differs across configs; test undefined"
        return out
    res = contingency_tables.cochrans_q(x, return_object=True)
    out["statistic"] = float(res.statistic)
    out["dof"] = int(res.df)
    out["p_value"] = float(res.pvalue)
    return out


def paired_binary_test(a: pd.Series, b: pd.Series) -> dict:
    """SD (``a``) vs a mitigation (``b``) on shared seeds: rates, discordant pairs, exact McNemar.

    Series are aligned on their index (prompt, seed, ...); pairs with NA in either are dropped,
    so a failed image removes its pair rather than counting as "not flagged". The counting and
    the exact McNemar p come from ``analysis.stats.paired.paired_comparison`` (its ``mcnemar_p``
    equals statsmodels ``mcnemar(exact=True)``), which also adds the Agresti-Min CI.
    b10: flagged under a only; b01: flagged under b only. difference = rate_b - rate_a.
    """
    for name, s in (("a", a), ("b", b)):
        if not s.index.is_unique:
            raise AuditError(
                f"paired_binary_test: index of {name} has duplicates; pairs are ambiguous"
            )
    joined = pd.concat([a.astype("boolean"), b.astype("boolean")], axis=1, join="inner")
    both = joined.dropna(how="any")
    res = paired_comparison(
        both.iloc[:, 0].to_numpy(dtype=bool), both.iloc[:, 1].to_numpy(dtype=bool)
    )
    return {
        "n_pairs": res["n_pairs"],
        "n_dropped": int(len(a.index.union(b.index)) - res["n_pairs"]),
        "rate_a": res["rate_baseline"],
        "rate_b": res["rate_config"],
        "difference": res["difference"],
        "ci_low": res["ci_low"],
        "ci_high": res["ci_high"],
        "b10": res["b"],
        "b01": res["c"],
        "mcnemar_p": res["mcnemar_p"],
    }
