"""I2P metrics against independent computations: scipy for correlations, exact order statistics
for the expected maximum (with and without replacement), a materialised per-image cluster
bootstrap, and hand-made tables for Table 1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.errors import AuditError
from analysis.i2p.correlation import CORRELATION_COLUMNS, binned_means, toxicity_correlation
from analysis.i2p.loader import load_i2p
from analysis.i2p.table import (
    PROTOCOLS,
    TABLE_COLUMNS,
    check_protocol,
    dataset_table,
    run_prompts,
    table_from_prompts,
    wide_table,
    write_table,
)
from analysis.stats.bootstrap import cluster_ratio_interval, expected_max

ROWS = "with-replacement-rows"
AUTHORS = "i2p-authors"
ROW_ORDER_CATS = [
    "hate",
    "harassment",
    "violence",
    "self-harm",
    "sexual",
    "shocking",
    "illegal activity",
]


@pytest.fixture(scope="module")
def i2p() -> pd.DataFrame:
    return load_i2p().frame


def exact_max_moments(rates: np.ndarray, k: int = 25) -> tuple[float, float]:
    """E[max] and SD[max] of k draws with replacement, from P(max <= v) = F(v)^k (no sampling)."""
    values = np.unique(rates)
    cdf = np.array([(rates <= v).mean() for v in values])
    pmf = np.diff(np.concatenate([[0.0], cdf**k]))
    mean = float((values * pmf).sum())
    return mean, float(np.sqrt((values**2 * pmf).sum() - mean**2))


def exact_max_moments_without_replacement(rates: np.ndarray, k: int = 25) -> tuple[float, float]:
    """E[max] and SD[max] of k draws without replacement: P(max <= v) = C(#<=v, k) / C(N, k),
    the hypergeometric probability that all k draws fall among the units at or below v."""
    values = np.unique(rates)
    below = np.array([(rates <= v).sum() for v in values])
    cdf = stats.hypergeom(len(rates), below, k).pmf(k)
    pmf = np.diff(np.concatenate([[0.0], cdf]))
    mean = float((values * pmf).sum())
    return mean, float(np.sqrt(max((values**2 * pmf).sum() - mean**2, 0.0)))


def test_paper_headline_numbers_from_bundled_data(i2p):
    """SD 1.4 inappropriate probability ~0.39; Spearman toxicity vs inappropriateness ~0.22.

    The default protocol pools the 4703 rows into 4467 prompt texts and draws 25 of them
    without replacement; the with-replacement-rows protocol keeps the 4703 rows as units.
    """
    share = i2p["inappropriate_percentage"].to_numpy() / 100
    table = dataset_table(i2p, n_draws=10_000)
    overall = table[table["category"] == "all"].iloc[0]
    assert overall["exp_max_protocol"] == AUTHORS
    assert overall["inappropriate_probability"] == pytest.approx(share.mean(), abs=1e-12)
    assert round(overall["inappropriate_probability"], 2) == 0.39
    assert overall["n_images"] == 47_030 and overall["n_prompts"] == 4703
    assert overall["n_prompt_units"] == 4467 == i2p["prompt"].nunique()
    assert overall["n_inappropriate"] == round(share.sum() * 10)
    # every row has 10 images, so a text's pooled share is the mean of its rows' shares
    pooled = i2p.groupby("prompt")["inappropriate_percentage"].mean().to_numpy() / 100
    mean, sd = exact_max_moments_without_replacement(pooled)
    assert overall["exp_max_mean"] == pytest.approx(mean, abs=0.003)
    assert overall["exp_max_std"] == pytest.approx(sd, abs=0.004)
    assert (round(overall["exp_max_mean"], 2), round(overall["exp_max_std"], 2)) == (0.97, 0.06)
    # the cluster interval is wider than the per-image Wilson one and holds the estimate
    assert overall["cluster_ci_low"] < overall["ci_low"] < overall["inappropriate_probability"]
    assert overall["inappropriate_probability"] < overall["ci_high"] < overall["cluster_ci_high"]

    rows = dataset_table(i2p, n_draws=10_000, protocol=ROWS)
    old = rows[rows["category"] == "all"].iloc[0]
    assert (old["exp_max_protocol"], old["n_prompt_units"]) == (ROWS, 4703)
    mean, sd = exact_max_moments(share)
    assert old["exp_max_mean"] == pytest.approx(mean, abs=0.003)
    assert old["exp_max_std"] == pytest.approx(sd, abs=0.004)
    rho = stats.spearmanr(i2p["prompt_toxicity"], i2p["inappropriate_percentage"]).statistic
    assert round(rho, 2) == 0.22


def test_correlation_matches_scipy_per_category_and_target(i2p):
    frame = i2p.iloc[:600]
    corr = toxicity_correlation(frame, n_boot=2000, seed=1)
    assert list(corr.columns) == CORRELATION_COLUMNS
    assert len(corr) == 8 * 3
    for row in corr.itertuples():
        if row.category == "all":
            sub = frame
        else:
            sub = frame[frame["categories"].str.split(", ").map(lambda c, r=row: r.category in c)]
        x, y = sub["prompt_toxicity"].to_numpy(), sub[row.target].to_numpy()
        assert row.n == len(sub)
        assert row.n_toxic == int((x > 0.5).sum())
        if len(sub) < 3 or np.ptp(y) == 0:
            assert np.isnan(row.spearman_rho)
            continue
        ref = stats.spearmanr(x, y)
        assert row.spearman_rho == ref.statistic  # bit for bit
        assert row.p_value == pytest.approx(ref.pvalue, rel=1e-9)
        assert row.pearson_r == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    # the bootstrap CI of the whole set against scipy's own percentile bootstrap
    row = corr[(corr["category"] == "all") & (corr["target"] == "inappropriate_percentage")].iloc[0]
    ref_ci = stats.bootstrap(
        (frame["prompt_toxicity"].to_numpy(), frame["inappropriate_percentage"].to_numpy()),
        lambda a, b: stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert row.ci_low == pytest.approx(ref_ci.low, abs=0.02)
    assert row.ci_high == pytest.approx(ref_ci.high, abs=0.02)
    assert row.ci_low < row.spearman_rho < row.ci_high


def test_binned_means_against_hand_computation():
    x = np.array([0.0, 0.05, 0.1, 0.15, 0.55, 1.0])
    y = np.array([10.0, 30.0, 0.0, 40.0, 90.0, 100.0])
    out = binned_means(x, y, edges=np.array([0.0, 0.1, 0.5, 1.0]))
    assert list(out["n"]) == [2, 2, 2]
    assert list(out["mean"]) == [20.0, 20.0, 95.0]
    half = stats.t.ppf(0.975, 1) * np.std([10.0, 30.0], ddof=1) / np.sqrt(2)
    assert out.loc[0, "ci_low"] == pytest.approx(20 - half)
    assert out.loc[0, "ci_high"] == pytest.approx(20 + half)
    single = binned_means(np.array([0.3]), np.array([50.0]))
    assert single["n"].sum() == 1 and single["ci_low"].isna().all()


def hand_made() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "config": "sd",
            "prompt_id": ["a", "b", "c", "d"],
            "categories": ["hate", "hate, sexual", "sexual", "shocking"],
            "n_images": [10, 10, 10, 4],
            "n_inappropriate": [0, 5, 10, 1],
            "n_missing_images": [0, 0, 0, 6],
        }
    )


def test_table_maths_on_a_hand_made_table():
    table = table_from_prompts(hand_made(), source="run", n_draws=20_000, seed=3, protocol=ROWS)
    assert list(table.columns) == TABLE_COLUMNS
    assert set(table["exp_max_protocol"]) == {ROWS}
    rows = table.set_index("category")
    assert list(rows.index) == [
        "all",
        "hate",
        "harassment",
        "violence",
        "self-harm",
        "sexual",
        "shocking",
        "illegal activity",
    ]
    # probability is over images: (0 + 5 + 10 + 1) / 34
    assert rows.loc["all", "inappropriate_probability"] == pytest.approx(16 / 34)
    assert rows.loc["all", "n_missing_images"] == 6
    assert rows.loc["hate", "inappropriate_probability"] == pytest.approx(5 / 20)
    assert rows.loc["sexual", "inappropriate_probability"] == pytest.approx(15 / 20)
    assert rows.loc["hate", "n_prompts"] == 2 and rows.loc["sexual", "n_prompts"] == 2
    assert rows.loc["shocking", "n_images"] == 4
    # a category without prompts has no numbers rather than zeros
    assert rows.loc["violence", "n_prompts"] == 0
    assert np.isnan(rows.loc["violence", "inappropriate_probability"])
    # expected max: exact order statistics of 25 draws with replacement
    for cat, shares in {
        "all": [0.0, 0.5, 1.0, 0.25],
        "hate": [0.0, 0.5],
        "sexual": [0.5, 1.0],
        "shocking": [0.25],
    }.items():
        mean, sd = exact_max_moments(np.array(shares))
        assert rows.loc[cat, "exp_max_mean"] == pytest.approx(mean, abs=0.003)
        assert rows.loc[cat, "exp_max_std"] == pytest.approx(sd, abs=0.003)
    # hate: P(max = 0) = 0.5^25, so E[max] = 0.5 (1 - 0.5^25)
    assert rows.loc["hate", "exp_max_mean"] == pytest.approx(0.5, abs=1e-6)
    low, high = stats.binomtest(16, 34).proportion_ci(method="wilson")
    assert (rows.loc["all", "ci_low"], rows.loc["all", "ci_high"]) == pytest.approx((low, high))
    # the seed makes it reproducible
    again = table_from_prompts(hand_made(), source="run", n_draws=20_000, seed=3, protocol=ROWS)
    pd.testing.assert_frame_equal(table, again)


def test_run_prompts_counts_verdicts_and_leaves_missing_out():
    verdicts = pd.DataFrame(
        {
            "config": ["sd"] * 4 + ["sld-max"] * 4,
            "prompt_id": ["1", "1", "2", "2"] * 2,
            "group": ["hate", "hate", "sexual, hate", "sexual, hate"] * 2,
            "verdict": pd.array([True, False, True, pd.NA, False, False, pd.NA, pd.NA], "boolean"),
        }
    )
    per_prompt = run_prompts(verdicts).set_index(["config", "prompt_id"])
    assert per_prompt.loc[("sd", "1"), ["n_images", "n_inappropriate"]].tolist() == [2, 1]
    assert per_prompt.loc[("sd", "2"), ["n_images", "n_missing_images"]].tolist() == [1, 1]
    table = table_from_prompts(run_prompts(verdicts), source="run", n_draws=1000)
    sld = table[(table["config"] == "sld-max")].set_index("category")
    # prompt 2 has no verdict under sld-max: it is left out, and its images count as missing
    assert sld.loc["all", "n_prompts"] == 1 and sld.loc["all", "n_missing_images"] == 2
    assert sld.loc["sexual", "n_prompts"] == 0
    sd = table[(table["config"] == "sd")].set_index("category")
    assert sd.loc["hate", "inappropriate_probability"] == pytest.approx(2 / 3)


def test_write_table_renders_the_paper_layout(tmp_path):
    table = table_from_prompts(hand_made(), source="run", n_draws=1000)
    files = write_table(table, tmp_path)
    names = [p.name for p in files]
    assert names == ["i2p_table.csv", "i2p_table.md", "i2p_table.html", "i2p_table.tex"]
    back = pd.read_csv(files[0])
    assert list(back.columns) == TABLE_COLUMNS and len(back) == 8
    wide = wide_table(table)
    all_row = wide[wide["category"] == "all"].iloc[0]
    assert all_row["sd prob."].startswith(f"{16 / 34:.2f} [")
    assert all_row["prompts"] == 4
    md = files[1].read_text()
    assert "| all | 4 | 0.47 [" in md
    assert "<td>hate</td>" in files[2].read_text()


def two_texts() -> pd.DataFrame:
    """Rows p1 and p2 repeat one prompt text (1/4 and 6/6 images): pooled, 7/10 = 0.7."""
    return pd.DataFrame(
        {
            "config": "sd",
            "prompt_id": ["p1", "p2", "p3"],
            "prompt": ["a cat", "a cat", "a dog"],
            "categories": ["hate", "hate", "hate"],
            "n_images": [4, 6, 10],
            "n_inappropriate": [1, 6, 2],
            "n_missing_images": [0, 0, 0],
        }
    )


def test_protocols_differ_by_hand_on_duplicate_texts():
    kw = {"source": "dataset", "n_draws": 20_000, "sample_size": 2, "seed": 5}
    authors = table_from_prompts(two_texts(), **kw).set_index("category").loc["all"]
    rows = table_from_prompts(two_texts(), protocol=ROWS, **kw).set_index("category").loc["all"]
    # authors: units 'a cat' = 7/10 (pooled images, not the 0.625 mean of shares), 'a dog' = 0.2;
    # drawing both without replacement makes the max always 0.7
    assert (authors["n_prompts"], authors["n_prompt_units"]) == (3, 2)
    assert authors["exp_max_protocol"] == AUTHORS and authors["exp_max_sample_size"] == 2
    assert authors["exp_max_mean"] == pytest.approx(0.7, abs=1e-12)
    assert authors["exp_max_std"] == pytest.approx(0.0, abs=1e-12)
    # rows: units 0.25, 1.0, 0.2, two draws with replacement: P(max) = 1/9, 3/9, 5/9 for
    # 0.2, 0.25, 1.0, so E = 5.95 / 9 and E[max^2] = 5.2275 / 9
    assert (rows["n_prompt_units"], rows["exp_max_protocol"]) == (3, ROWS)
    assert rows["exp_max_mean"] == pytest.approx(5.95 / 9, abs=0.006)
    assert rows["exp_max_std"] == pytest.approx(np.sqrt(5.2275 / 9 - (5.95 / 9) ** 2), abs=0.006)
    # the image-level probability does not depend on the protocol: 9 / 20
    assert authors["inappropriate_probability"] == rows["inappropriate_probability"] == 9 / 20


def test_run_prompts_carry_texts_so_repeated_prompts_merge():
    verdicts = pd.DataFrame(
        {
            "config": "sd",
            "prompt_id": ["1", "1", "2", "2", "3", "3"],
            "prompt": ["x", "x", "x", "x", "y", "y"],
            "group": "sexual",
            "verdict": pd.array([True, True, False, False, False, True], "boolean"),
        }
    )
    per_prompt = run_prompts(verdicts)
    assert list(per_prompt["prompt"]) == ["x", "x", "y"]
    row = table_from_prompts(per_prompt, source="run", sample_size=2).iloc[0]
    # units: 'x' pools 2 of 4 images = 0.5, 'y' = 0.5; max of both is 0.5
    assert (row["n_prompts"], row["n_prompt_units"]) == (3, 2)
    assert (row["exp_max_mean"], row["exp_max_std"]) == (0.5, 0.0)


def test_fewer_prompts_than_the_sample_size():
    rates = np.linspace(0, 1, 24)
    with pytest.raises(AuditError, match="only 24 have a verdict"):
        expected_max(rates, sample_size=25, replace=False)
    # with replacement 24 units are fine; 25 units without replacement too
    assert expected_max(rates, n_draws=100, replace=True)[0] <= 1.0
    assert expected_max(np.linspace(0, 1, 25), n_draws=50, replace=False) == (1.0, 0.0)
    # the table draws all units of a small cell and records k, in the CSV and the layout
    table = table_from_prompts(hand_made(), source="run", n_draws=500)
    rows = table.set_index("category")
    assert rows.loc["all", "exp_max_sample_size"] == 4
    assert (rows.loc["all", "exp_max_mean"], rows.loc["all", "exp_max_std"]) == (1.0, 0.0)
    assert rows.loc["shocking", "exp_max_sample_size"] == 1
    assert rows.loc["violence", "exp_max_sample_size"] == 0
    assert np.isnan(rows.loc["violence", "exp_max_mean"])
    wide = wide_table(table).set_index("category")
    assert wide.loc["all", "sd exp. max."] == "1.00 ± 0.00 (k=4)"
    # the with-replacement protocol keeps k = 25 (repeats allowed), and says so
    assert (
        (
            table_from_prompts(hand_made(), source="run", n_draws=50, protocol=ROWS)[
                "exp_max_sample_size"
            ].iloc[0]
        )
        == 25
    )


def test_expected_max_without_replacement_matches_exact_order_statistics():
    rates = np.round(np.random.default_rng(11).beta(0.5, 1.5, size=60), 1)
    mean, sd = expected_max(rates, n_draws=20_000, sample_size=25, seed=2, replace=False)
    ref_mean, ref_sd = exact_max_moments_without_replacement(rates, 25)
    assert mean == pytest.approx(ref_mean, abs=0.004)
    assert sd == pytest.approx(ref_sd, abs=0.004)
    # and it is not the with-replacement answer on these data
    assert abs(ref_mean - exact_max_moments(rates, 25)[0]) > 0.02


def test_protocol_names_are_checked():
    assert check_protocol(AUTHORS) == AUTHORS and set(PROTOCOLS) == {AUTHORS, ROWS}
    with pytest.raises(AuditError, match=r"i2p-authors.*with-replacement-rows"):
        check_protocol("authors")
    with pytest.raises(AuditError, match="unknown expected-max protocol 'nope'"):
        table_from_prompts(hand_made(), source="run", protocol="nope")


def materialised_cluster_interval(
    hits: np.ndarray, totals: np.ndarray, n_boot: int, seed: int
) -> tuple[float, float]:
    """Slow reference: expand each prompt into 0/1 images, stack the resampled prompts' images
    and take their mean, one resample at a time (blocks of 1,000 draws, as documented)."""
    images = [
        np.r_[np.ones(int(h)), np.zeros(int(t - h))] for h, t in zip(hits, totals, strict=True)
    ]
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [
            rng.integers(0, len(images), size=(min(1000, n_boot - s), len(images)))
            for s in range(0, n_boot, 1000)
        ]
    )
    means = [np.concatenate([images[i] for i in row]).mean() for row in idx]
    return tuple(np.percentile(means, [2.5, 97.5]))


def test_cluster_bootstrap_against_a_materialised_reference():
    rng = np.random.default_rng(4)
    totals = rng.integers(1, 12, size=40)
    hits = rng.binomial(totals, rng.beta(0.6, 1.2, size=40))
    got = cluster_ratio_interval(hits, totals, n_boot=2_500, seed=9)
    ref = materialised_cluster_interval(hits, totals, n_boot=2_500, seed=9)
    assert got == pytest.approx(ref, abs=1e-12)
    assert got == cluster_ratio_interval(hits, totals, n_boot=2_500, seed=9)
    assert got != cluster_ratio_interval(hits, totals, n_boot=2_500, seed=10)
    # scipy's percentile bootstrap of the same ratio agrees up to Monte Carlo error
    boot = stats.bootstrap(
        (hits.astype(float), totals.astype(float)),
        lambda h, t, axis=-1: h.sum(axis=axis) / t.sum(axis=axis),
        paired=True,
        n_resamples=20_000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert got == pytest.approx((boot.low, boot.high), abs=0.015)
    assert all(np.isnan(cluster_ratio_interval(np.array([]), np.array([]))))


def test_table_cluster_interval_resamples_prompt_units():
    table = table_from_prompts(two_texts(), source="run", n_draws=1_500, seed=2)
    row = table.iloc[0]
    # units under i2p-authors: 'a cat' 7/10 and 'a dog' 2/10
    ref = materialised_cluster_interval(np.array([7, 2]), np.array([10, 10]), 1_500, 2)
    assert (row["cluster_ci_low"], row["cluster_ci_high"]) == pytest.approx(ref, abs=1e-12)
    # two equal-size units: resamples are 0.2, 0.45 or 0.7, so the interval spans the extremes
    assert (row["cluster_ci_low"], row["cluster_ci_high"]) == pytest.approx((0.2, 0.7))
    rows = table_from_prompts(two_texts(), source="run", n_draws=1_500, seed=2, protocol=ROWS)
    ref = materialised_cluster_interval(np.array([1, 6, 2]), np.array([4, 6, 10]), 1_500, 2)
    assert (rows["cluster_ci_low"].iloc[0], rows["cluster_ci_high"].iloc[0]) == pytest.approx(ref)


def paired_verdicts() -> pd.DataFrame:
    """sd vs sld-max on shared (prompt, image index). Prompt 1 (sexual), 6 images:
    sd T T T T F F / sld F F T F F T -> both 1, sd only 3, sld only 1, neither 1.
    Prompt 2 (hate, sexual), 4 images: sd T T NA F / sld F T F F -> image 2 dropped;
    both 1, sd only 1, neither 1. Overall: both 2, sd only 4, sld only 1, neither 2 (9 pairs)."""
    sd = [True, True, True, True, False, False, True, True, pd.NA, False]
    sld = [False, False, True, False, False, True, False, True, False, False]
    one = {
        "prompt_id": ["1"] * 6 + ["2"] * 4,
        "image_index": [0, 1, 2, 3, 4, 5, 0, 1, 2, 3],
        "group": ["sexual"] * 6 + ["hate, sexual"] * 4,
        "seed": [10, 11, 12, 13, 14, 15, 20, 21, 22, 23],
    }
    return pd.concat(
        [
            pd.DataFrame({"config": "sld-max", **one, "verdict": pd.array(sld, "boolean")}),
            pd.DataFrame({"config": "sd", **one, "verdict": pd.array(sd, "boolean")}),
        ],
        ignore_index=True,
    )


def test_paired_table_against_a_hand_made_2x2_and_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar

    from analysis.i2p.paired import PAIRED_COLUMNS, paired_table

    table = paired_table(paired_verdicts(), nudenet_rule="i2p-authors", nudenet_threshold=0.6)
    assert list(table.columns) == PAIRED_COLUMNS
    # 'sd' is the baseline although it comes second; one row per category, 'all' first
    assert set(table["baseline"]) == {"sd"} and set(table["config"]) == {"sld-max"}
    assert list(table["category"]) == ["all", *ROW_ORDER_CATS]
    rows = table.set_index("category")
    hand = {  # category: (both, sd only, sld only, neither, dropped)
        "all": (2, 4, 1, 2, 1),
        "sexual": (2, 4, 1, 2, 1),
        "hate": (1, 1, 0, 1, 1),
    }
    for cat, (a, b, c, d, dropped) in hand.items():
        r = rows.loc[cat]
        n = a + b + c + d
        assert (r["n_pairs"], r["n_dropped"], r["b10"], r["b01"]) == (n, dropped, b, c)
        assert r["rate_sd"] == pytest.approx((a + b) / n)
        assert r["rate_config"] == pytest.approx((a + c) / n)
        assert r["difference"] == pytest.approx((c - b) / n)
        assert r["ci_low"] <= r["difference"] <= r["ci_high"] or np.isnan(r["ci_low"])
    # clustered McNemar (Durkalski) by hand, clusters = prompts: sd-only/sld-only pairs are
    # (3, 1) in prompt 1 and (1, 0) in prompt 2 -> X2 = (4 - 1)^2 / (2^2 + 1^2) = 1.8;
    # hate (prompt 2 alone): 1^2 / 1 = 1, which is McNemar's chi2 on its 2x2
    assert rows.loc["all", "p_value"] == pytest.approx(stats.chi2.sf(1.8, 1))
    hate = mcnemar([[1, 1], [0, 1]], exact=False, correction=False).pvalue
    assert rows.loc["hate", "p_value"] == pytest.approx(hate) == pytest.approx(stats.chi2.sf(1, 1))
    assert rows.loc["all", "rate_sd"] == pytest.approx(6 / 9)
    assert rows.loc["all", "rate_config"] == pytest.approx(3 / 9)
    # cluster-robust interval: each prompt's change (-2 of 6, -1 of 3) is the overall -1/3 of
    # its size, so the between-prompt variance is 0; one prompt alone (hate) has no interval
    assert (rows.loc["all", "ci_low"], rows.loc["all", "ci_high"]) == pytest.approx((-1 / 3,) * 2)
    assert np.isnan(rows.loc["hate", "ci_low"]) and rows.loc["all", "n_clusters"] == 2
    # a category without prompts has no pairs and no numbers
    assert rows.loc["violence", "n_pairs"] == 0 and np.isnan(rows.loc["violence", "p_value"])
    assert set(table["nudenet_rule"]) == {"i2p-authors"}
    assert set(table["nudenet_threshold"]) == {0.6}


def test_paired_table_refuses_unpaired_inputs():
    from analysis.i2p.paired import paired_table

    verdicts = paired_verdicts()
    with pytest.raises(AuditError, match="needs >= 2 configs"):
        paired_table(verdicts[verdicts["config"] == "sd"])
    with pytest.raises(AuditError, match="baseline config 'sld'"):
        paired_table(verdicts, baseline="sld")
    other_seeds = verdicts.assign(seed=verdicts["seed"] + (verdicts["config"] == "sd"))
    with pytest.raises(AuditError, match="different seeds"):
        paired_table(other_seeds)
    # the baseline can be chosen: the signs flip and the p-value stays
    flipped = paired_table(verdicts, baseline="sld-max").set_index("category").loc["all"]
    assert (flipped["config"], flipped["b10"], flipped["b01"]) == ("sd", 1, 4)
    assert flipped["difference"] == pytest.approx(3 / 9)
    assert flipped["p_value"] == pytest.approx(stats.chi2.sf(1.8, 1))
