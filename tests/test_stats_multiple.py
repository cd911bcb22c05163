"""Multiplicity, heterogeneity and paired tests checked by hand and against direct calls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from analysis.errors import AuditError
from analysis.stats.multiple import (
    adjust_pvalues,
    cochran_q,
    heterogeneity_test,
    paired_binary_test,
)

# ---------------------------------------------------------------- adjust_pvalues


@pytest.mark.parametrize(
    ("raw", "holm", "bh"),
    [
        # sorted 0.01, 0.03, 0.04 -> Holm 3*0.01, max(2*0.03, .), max(1*0.04, 0.06)
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06], [0.03, 0.04, 0.04]),
        # the NaN is outside the family: m stays 3, same numbers
        ([0.01, np.nan, 0.04, 0.03], [0.03, np.nan, 0.06, 0.06], [0.03, np.nan, 0.04, 0.04]),
        # capped at 1
        ([0.5, 0.6], [1.0, 1.0], [0.6, 0.6]),
        ([np.nan, np.nan], [np.nan, np.nan], [np.nan, np.nan]),
        ([], [], []),
    ],
)
def test_adjust_pvalues_by_hand(raw: list[float], holm: list[float], bh: list[float]) -> None:
    idx = [f"c{i}" for i in range(len(raw))]
    out = adjust_pvalues(pd.Series(raw, index=idx, dtype=float))
    assert list(out.columns) == ["p_holm", "p_bh"]
    assert list(out.index) == idx
    np.testing.assert_allclose(out["p_holm"].to_numpy(), holm, rtol=1e-12)
    np.testing.assert_allclose(out["p_bh"].to_numpy(), bh, rtol=1e-12)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_adjust_pvalues_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(AuditError):
        adjust_pvalues(pd.Series([0.1, bad]))


try:  # hypothesis is not (yet) in the dev extra: skip only this property test without it
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover

    def test_adjust_pvalues_properties() -> None:
        pytest.skip("hypothesis not installed")

else:

    @settings(max_examples=40, deadline=None)  # Holm calls gc.collect(): ~0.1 s each
    @given(
        st.lists(
            st.one_of(st.floats(0.0, 1.0), st.just(float("nan"))),
            min_size=1,
            max_size=60,
        )
    )
    def test_adjust_pvalues_properties(raw: list[float]) -> None:
        p = pd.Series(raw, dtype=float)
        out = adjust_pvalues(p)
        assert (out["p_holm"].isna() == p.isna()).all()
        known = p.notna()
        p, holm, bh = p[known], out["p_holm"][known], out["p_bh"][known]
        tol = 1e-12
        assert (holm >= p - tol).all() and (bh >= p - tol).all()
        assert (holm <= 1 + tol).all()
        assert (bh <= holm + tol).all()
        order = np.argsort(p.to_numpy(), kind="stable")
        assert (np.diff(holm.to_numpy()[order]) >= -tol).all()
        assert (np.diff(bh.to_numpy()[order]) >= -tol).all()


# ---------------------------------------------------------------- heterogeneity_test


def _counts(rows: list[tuple[str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["country", "k", "n"])


def test_heterogeneity_3x2_by_hand() -> None:
    # 10/50, 20/50, 30/50: expected 20 positive / 30 negative per row.
    # X2 = (100/20)*2 + (100/30)*2 = 16.667, dof 2, p = exp(-X2/2).
    res = heterogeneity_test(
        _counts([("A", 10, 50), ("B", 20, 50), ("C", 30, 50)]), "country", "k", "n"
    )
    assert res["statistic"] == pytest.approx(10 + 20 / 3, rel=1e-12)
    assert res["dof"] == 2
    assert res["p_value"] == pytest.approx(math.exp(-(10 + 20 / 3) / 2), rel=1e-10)
    assert res["n_groups"] == 3
    assert res["small_expected"] is False
    assert math.isnan(res["p_value_mc"])
    assert "chi-square" in res["method"]


def test_heterogeneity_2x2_has_no_yates_correction() -> None:
    # 5/20 vs 15/20: expected 10 everywhere, X2 = 4 * 25/10 = 10 (Yates would give 8.1).
    res = heterogeneity_test(_counts([("A", 5, 20), ("B", 15, 20)]), "country", "k", "n")
    assert res["statistic"] == pytest.approx(10.0, rel=1e-12)
    assert res["p_value"] == pytest.approx(stats.chi2.sf(10.0, 1), rel=1e-10)


def test_heterogeneity_sums_rows_and_drops_empty_groups() -> None:
    split = _counts([("A", 4, 20), ("A", 6, 30), ("B", 20, 50), ("C", 30, 50), ("D", 0, 0)])
    whole = _counts([("A", 10, 50), ("B", 20, 50), ("C", 30, 50)])
    a = heterogeneity_test(split, "country", "k", "n")
    b = heterogeneity_test(whole, "country", "k", "n")
    assert a["statistic"] == pytest.approx(b["statistic"])
    assert a["n_groups"] == 3 and a["n_groups_dropped"] == 1


def test_heterogeneity_small_expected_monte_carlo_matches_fisher() -> None:
    # Equal row sizes make the hypergeometric symmetric and unimodal, so ordering tables by X2
    # equals Fisher's ordering by probability: the exact chi-square p is Fisher's two-sided p.
    res = heterogeneity_test(_counts([("A", 1, 10), ("B", 6, 10)]), "country", "k", "n")
    assert res["small_expected"] is True
    fisher = stats.fisher_exact([[1, 9], [6, 4]]).pvalue
    assert res["p_value_mc"] == pytest.approx(fisher, abs=0.01)
    assert "prefer p_value_mc" in res["note"]


@pytest.mark.parametrize("positives", [(0, 0, 0), (10, 20, 5)])
def test_heterogeneity_no_variation_is_nan_with_note(positives: tuple[int, int, int]) -> None:
    n = (10, 20, 5)
    df = _counts([(g, k, m) for g, k, m in zip("ABC", positives, n, strict=True)])
    res = heterogeneity_test(df, "country", "k", "n")
    assert math.isnan(res["p_value"]) and math.isnan(res["statistic"])
    assert "no variation" in res["note"]


@pytest.mark.parametrize(
    "rows",
    [
        [("A", 3, 10)],
        [("A", 3, 10), ("A", 1, 5)],
        [("A", 3, 10), ("B", 0, 0)],
        [("A", 3, 10), ("B", 11, 10)],
        [("A", -1, 10), ("B", 1, 10)],
    ],
)
def test_heterogeneity_bad_input_raises_one_line(rows: list[tuple[str, int, int]]) -> None:
    with pytest.raises(AuditError) as exc:
        heterogeneity_test(_counts(rows), "country", "k", "n")
    assert "\n" not in str(exc.value)


def test_heterogeneity_missing_column() -> None:
    with pytest.raises(AuditError, match="lacks column"):
        heterogeneity_test(_counts([("A", 1, 2)]), "country", "positives", "n")


# ---------------------------------------------------------------- cochran_q

HAND = pd.DataFrame(
    [[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]],
    columns=["sd", "sld_weak", "sld_max"],
)


def test_cochran_q_by_hand() -> None:
    # C = (5, 3, 1), N = 9, sum R^2 = 19, k = 3: Q = 2 * (3*35 - 81) / (27 - 19) = 6.
    res = cochran_q(HAND.astype(bool))
    assert res["statistic"] == pytest.approx(6.0, rel=1e-12)
    assert res["dof"] == 2
    assert res["p_value"] == pytest.approx(math.exp(-3.0), rel=1e-10)
    assert res["n_items"] == 6


def test_cochran_q_two_configs_is_uncorrected_mcnemar() -> None:
    x = HAND[["sd", "sld_max"]]
    res = cochran_q(x)
    table = pd.crosstab(x["sd"], x["sld_max"]).reindex(index=[0, 1], columns=[0, 1], fill_value=0)
    ref = mcnemar(table.to_numpy(), exact=False, correction=False)
    assert res["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_cochran_q_drops_incomplete_items() -> None:
    with_na = pd.concat(
        [
            HAND.astype("boolean"),
            pd.DataFrame({"sd": [pd.NA], "sld_weak": [True], "sld_max": [True]}),
        ],
        ignore_index=True,
    ).astype("boolean")
    res = cochran_q(with_na)
    assert res["statistic"] == pytest.approx(6.0)
    assert res["n_items"] == 6 and res["n_dropped"] == 1


@pytest.mark.parametrize(
    ("frame", "raises"),
    [
        (pd.DataFrame({"sd": [True, False]}), True),
        (pd.DataFrame({"sd": [True, False], "sld": [True, False]}), False),
    ],
)
def test_cochran_q_edges(frame: pd.DataFrame, raises: bool) -> None:
    if raises:
        with pytest.raises(AuditError):
            cochran_q(frame)
    else:
        res = cochran_q(frame)
        assert math.isnan(res["p_value"]) and "undefined" in res["note"]


# ---------------------------------------------------------------- paired_binary_test


def test_paired_binary_test_against_statsmodels() -> None:
    idx = [f"s{i}" for i in range(12)]
    a = pd.Series([1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 1, pd.NA], index=idx, dtype="boolean")
    b = pd.Series([0, 0, 0, 0, 1, 1, 1, 0, 0, pd.NA, 0, 1], index=idx, dtype="boolean")
    b = b.drop("s8")  # unmatched seed: dropped along with the NA pairs s9, s11
    res = paired_binary_test(a, b)
    # pairs s0..s7, s10: a=1,b=0 at s0-s3, s10 -> b10 = 5; a=0,b=1 at s6 -> b01 = 1
    assert res["n_pairs"] == 9 and res["n_dropped"] == 3
    assert (res["b10"], res["b01"]) == (5, 1)
    assert res["rate_a"] == pytest.approx(7 / 9)
    assert res["rate_b"] == pytest.approx(3 / 9)
    assert res["difference"] == pytest.approx(3 / 9 - 7 / 9)
    ref = mcnemar(np.array([[2, 5], [1, 1]]), exact=True)  # [[11, 10], [01, 00]]
    assert res["mcnemar_p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert res["ci_low"] <= res["difference"] <= res["ci_high"]


def test_paired_binary_test_rejects_duplicate_index() -> None:
    a = pd.Series([True, False], index=["s0", "s0"])
    with pytest.raises(AuditError, match="duplicates"):
        paired_binary_test(a, pd.Series([True], index=["s0"]))
