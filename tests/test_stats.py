"""Statistics checked against statsmodels/scipy and closed forms."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from analysis.stats import (
    expected_max,
    mcnemar_p,
    paired_comparison,
    rate_table,
    spearman_ci,
    wilson_interval,
)
from analysis.stats.correlation import weighted_spearman


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (75, 100), (1, 1000)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)
    ref = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert low == pytest.approx(ref[0], abs=1e-12)
    assert high == pytest.approx(ref[1], abs=1e-12)


def test_wilson_empty_and_invalid() -> None:
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_rate_table_keeps_missing_out_of_denominator() -> None:
    df = pd.DataFrame(
        {
            "country": ["JPN"] * 5 + ["NGA"] * 3,
            "flag": pd.array([True, True, False, None, None, False, False, True], dtype="boolean"),
        }
    )
    out = rate_table(df, ["country"], "flag").set_index("country")
    assert out.loc["JPN", ["n", "k", "n_missing"]].tolist() == [3, 2, 2]
    assert out.loc["JPN", "rate"] == pytest.approx(2 / 3)
    assert out.loc["NGA", ["n", "k", "n_missing"]].tolist() == [3, 1, 0]
    ref = proportion_confint(2, 3, method="wilson")
    assert out.loc["JPN", "ci_low"] == pytest.approx(ref[0])


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 9), (10, 2), (40, 55)])
def test_mcnemar_matches_statsmodels(b: int, c: int) -> None:
    table = np.array([[20, b], [c, 30]])
    assert mcnemar_p(b, c) == pytest.approx(mcnemar(table, exact=True).pvalue)


def test_paired_comparison_counts_and_interval() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(200) < 0.4
    other = base & (rng.random(200) < 0.5)  # the mitigation only removes flags
    out = paired_comparison(base, other)
    assert out["n_pairs"] == 200
    assert out["b"] == int((base & ~other).sum()) and out["c"] == 0
    assert out["difference"] == pytest.approx(other.mean() - base.mean())
    assert out["ci_low"] < out["difference"] < out["ci_high"] < 0
    assert out["mcnemar_p"] == pytest.approx(stats.binomtest(out["b"], out["b"], 0.5).pvalue)


def test_weighted_spearman_equals_materialised_resamples() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(60)
    y = np.round(x + rng.random(60), 1)  # many ties, like I2P percentages
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=5)
    ours = weighted_spearman(x, y, counts)
    for b in range(5):
        ref = stats.spearmanr(np.repeat(x, counts[b]), np.repeat(y, counts[b])).statistic
        assert ours[b] == ref  # bit for bit
    with pytest.raises(ValueError, match="whole numbers"):  # not silently truncated
        weighted_spearman(x, y, counts + 0.5)


def test_spearman_ci_matches_scipy_point_and_scipy_bootstrap_interval() -> None:
    rng = np.random.default_rng(3)
    x = rng.random(300)
    y = x + rng.normal(0, 0.5, 300)
    out = spearman_ci(x, y, n_boot=4000, seed=1)
    ref = stats.spearmanr(x, y)
    assert out["rho"] == ref.statistic
    assert out["p_value"] == pytest.approx(ref.pvalue)
    assert out["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    boot = stats.bootstrap(
        (x, y),
        lambda a, b: stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(2),
    )
    assert out["ci_low"] == pytest.approx(boot.confidence_interval.low, abs=0.02)
    assert out["ci_high"] == pytest.approx(boot.confidence_interval.high, abs=0.02)
    assert spearman_ci(x, y, n_boot=500, seed=1) == spearman_ci(x, y, n_boot=500, seed=1)


def test_expected_max_closed_form() -> None:
    # Binary per-prompt rates with share p of ones: E[max of 25] = 1 - (1 - p)^25.
    rates = np.array([1.0] * 10 + [0.0] * 90)
    mean, std = expected_max(rates, n_draws=20_000, sample_size=25, seed=0)
    expected = 1 - 0.9**25
    assert mean == pytest.approx(expected, abs=0.01)
    assert std == pytest.approx(np.sqrt(expected * (1 - expected)), abs=0.01)
    assert expected_max(np.full(30, 0.3)) == (pytest.approx(0.3), pytest.approx(0.0))


def _documented_resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Resample indices as _bootstrap_rhos documents them: one spawned generator per block."""
    block = max(1, min(128, (1 << 21) // n))
    seqs = np.random.SeedSequence(seed).spawn(-(-n_boot // block))
    rows = [
        np.random.default_rng(s).integers(0, n, size=(min(block, n_boot - k * block), n))
        for k, s in enumerate(seqs)
    ]
    return np.concatenate(rows)


@pytest.mark.parametrize(("threads", "packed"), [(1, True), (2, True), (2, False)])
def test_bootstrap_rhos_equal_spearmanr_on_the_materialised_resamples(
    monkeypatch: pytest.MonkeyPatch, threads: int, packed: bool
) -> None:
    from analysis.stats import correlation

    monkeypatch.setattr(correlation.os, "cpu_count", lambda: threads)
    if not packed:  # the path for > ~130,000 draws per resample: draws summed on their own
        monkeypatch.setattr(correlation, "_shift", lambda m: 0.0)
    rng = np.random.default_rng(4)
    x = np.round(rng.random(150), 2)
    few = np.round(x * 10 + rng.normal(0, 3, 150))  # few values: the matrix-product path
    many = x + rng.normal(0, 0.3, 150)  # all distinct: ranks per row
    ours = correlation._bootstrap_rhos(correlation._Layout.of(x, np.array([few, many])), 300, 7)
    idx = _documented_resamples(150, 300, 7)
    for b in [0, 1, 127, 128, 299]:
        for j, y in enumerate((few, many)):
            assert ours[j, b] == stats.spearmanr(x[idx[b]], y[idx[b]]).statistic  # bit for bit


def test_bootstrap_rhos_on_i2p_equal_spearmanr_bit_for_bit() -> None:
    """At the issue's scale: n = 4,703 prompts, the three targets sharing their resamples."""
    from analysis.i2p.correlation import TARGETS
    from analysis.i2p.loader import load_i2p
    from analysis.stats import correlation

    frame = load_i2p(None).frame
    x = frame["prompt_toxicity"].to_numpy(float)
    ys = [frame[t].to_numpy(float) for t in TARGETS]
    ours = correlation._bootstrap_rhos(correlation._Layout.of(x, np.array(ys)), 200, 0)
    idx = _documented_resamples(x.size, 200, 0)
    for b in range(200):
        for j, y in enumerate(ys):
            assert ours[j, b] == stats.spearmanr(x[idx[b]], y[idx[b]]).statistic, (b, TARGETS[j])


def test_spearman_ci_many_equals_one_at_a_time() -> None:
    from analysis.stats.correlation import spearman_ci_many

    rng = np.random.default_rng(5)
    x = rng.random(200)
    ys = [np.round(x * 10 + rng.normal(0, 2, 200)), x + rng.random(200), np.full(200, 3.0)]
    many = spearman_ci_many(x, ys, n_boot=400, seed=3)
    for y, got in zip(ys, many, strict=True):
        one = spearman_ci(x, y, n_boot=400, seed=3)
        assert got.keys() == one.keys()
        for key in one:
            assert got[key] == pytest.approx(one[key], abs=1e-12, nan_ok=True)
    assert np.isnan(many[2]["rho"]) and many[2]["n"] == 200
    # missing values differ per y: each y keeps its own pairs
    y_nan = ys[0].copy()
    y_nan[:10] = np.nan
    mixed = spearman_ci_many(x, [y_nan, ys[1]], n_boot=200, seed=1)
    assert mixed[0] == spearman_ci(x, y_nan, n_boot=200, seed=1) and mixed[0]["n"] == 190


@pytest.mark.parametrize(("n", "k"), [(4500, 25), (60, 25), (25, 25), (10, 1)])
def test_subsets_are_distinct_and_uniform(n: int, k: int) -> None:
    from analysis.stats.bootstrap import _subsets

    idx = _subsets(np.random.default_rng(0), n, k, 4000)
    assert idx.shape == (4000, k) and idx.min() >= 0 and idx.max() < n
    assert (np.diff(np.sort(idx, axis=1), axis=1) > 0).all()
    hits = np.bincount(idx.ravel(), minlength=n) / idx.shape[0]
    assert hits == pytest.approx(np.full(n, k / n), abs=max(0.02, 6 * np.sqrt(k / n / 4000)))


def test_wilson_interval_is_scipys_bit_for_bit() -> None:
    """The closed form (no scipy.stats import) gives scipy's binomtest Wilson interval exactly."""
    for n in (1, 2, 7, 50, 333, 10_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for confidence in (0.9, 0.95, 0.99):
                ci = stats.binomtest(k, n).proportion_ci(
                    confidence_level=confidence, method="wilson"
                )
                assert wilson_interval(k, n, confidence) == (ci.low, ci.high), (k, n, confidence)


def test_paired_interval_z_is_the_normal_quantile() -> None:
    from analysis.stats import paired_comparison

    base = np.array([True] * 30 + [False] * 70)
    other = np.array([True] * 10 + [False] * 90)
    out = paired_comparison(base, other, confidence=0.9)
    bb, cc, m = 20.5, 0.5, 102.0  # discordant cells + 0.5; all four cells + 4 * 0.5
    var = ((bb + cc) - (cc - bb) ** 2 / m) / m**2
    half = stats.norm.ppf(0.95) * np.sqrt(var)
    assert out["ci_low"] == pytest.approx((cc - bb) / m - half, abs=1e-15)
    assert out["ci_high"] == pytest.approx((cc - bb) / m + half, abs=1e-15)


def test_cluster_interval_packed_path_equals_two_gathers() -> None:
    """Counts take the packed one-gather path; the interval equals the plain two-gather one."""
    from analysis.stats import bootstrap
    from analysis.stats.bootstrap import cluster_ratio_interval

    rng = np.random.default_rng(8)
    totals = rng.integers(0, 11, 300).astype(float)
    hits = np.floor(totals * rng.random(300))
    assert bootstrap._packed(hits, totals) is not None
    assert bootstrap._packed(hits + 0.5, totals) is None  # not counts: the plain path
    fast = cluster_ratio_interval(hits, totals, n_boot=2500, seed=4)
    rng = np.random.default_rng(4)
    ratios = []
    for size in (1000, 1000, 500):
        idx = rng.integers(0, 300, size=(size, 300))
        ratios.append(hits[idx].sum(axis=1) / totals[idx].sum(axis=1))
    assert fast == tuple(np.quantile(np.concatenate(ratios), [0.025, 0.975]))


def test_bootstrap_rhos_equal_spearmanr_on_random_tied_and_constant_data() -> None:
    """Small random data of every shape (heavy ties, all distinct, near-constant: NaN rhos)."""
    from analysis.stats import correlation

    rng = np.random.default_rng(11)
    for case in range(40):
        n = int(rng.integers(3, 40))
        x = np.round(rng.random(n), case % 3)
        ys = [
            np.round(rng.random(n) * (1 + case % 11)),  # few values
            rng.random(n),  # all distinct
            np.where(np.arange(n) == case % n, 2.0, 1.0),  # one value differs: NaN when missed
        ]
        ours = correlation._bootstrap_rhos(correlation._Layout.of(x, np.array(ys)), 60, case)
        idx = _documented_resamples(n, 60, case)
        for b in range(60):
            for j, y in enumerate(ys):
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ref = stats.spearmanr(x[idx[b]], y[idx[b]]).statistic
                assert ours[j, b] == ref or (np.isnan(ref) and np.isnan(ours[j, b])), (case, b, j)
