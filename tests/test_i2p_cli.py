"""`t2i-audit i2p correlate|table`: the documented CSV columns, values, figures and user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from analysis.cli import app
from analysis.errors import AuditError
from analysis.i2p.loader import BUNDLED_PATH

runner = CliRunner()


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    """400 bundled rows, saved as another copy would (with an index column)."""
    path = tmp_path_factory.mktemp("i2p") / "small.csv"
    pd.read_csv(BUNDLED_PATH, nrows=400).to_csv(path, index=True)
    return path


def test_correlate_writes_the_documented_columns(small_csv, tmp_path):
    result = runner.invoke(
        app,
        [
            *("i2p", "correlate", "--data", str(small_csv), "--out", str(tmp_path)),
            *("--n-boot", "500", "--no-figure"),
        ],
    )
    assert result.exit_code == 0, result.output
    corr = pd.read_csv(tmp_path / "toxicity_correlation.csv")
    assert list(corr.columns[:8]) == [
        "category",
        "target",
        "n",
        "spearman_rho",
        "ci_low",
        "ci_high",
        "p_value",
        "pearson_r",
    ]
    assert set(corr["target"]) == {
        "inappropriate_percentage",
        "nudity_percentage",
        "q16_percentage",
    }
    assert corr["category"].iloc[0] == "all"
    src = pd.read_csv(small_csv)
    row = corr[(corr["category"] == "all") & (corr["target"] == "q16_percentage")].iloc[0]
    ref = stats.spearmanr(src["prompt_toxicity"], src["q16_percentage"])
    assert row["spearman_rho"] == pytest.approx(ref.statistic, abs=1e-9)
    assert row["n"] == 400
    assert row["share_toxic"] == pytest.approx((src["prompt_toxicity"] > 0.5).mean())
    points = pd.read_csv(tmp_path / "toxicity_points.csv")
    assert len(points) == 400
    binned = pd.read_csv(tmp_path / "toxicity_binned.csv")
    assert list(binned.columns) == [
        "target",
        "bin_low",
        "bin_high",
        "n",
        "mean",
        "ci_low",
        "ci_high",
    ]
    assert binned.groupby("target")["n"].sum().eq(400).all()
    assert "have toxicity > 0.5" in result.output


def test_table_from_data_writes_the_documented_columns(small_csv, tmp_path):
    result = runner.invoke(
        app,
        ["i2p", "table", "--data", str(small_csv), "--out", str(tmp_path), "--n-draws", "2000"],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "i2p_table.csv")
    assert list(table.columns[:8]) == [
        "source",
        "config",
        "category",
        "n_prompts",
        "n_images",
        "inappropriate_probability",
        "exp_max_mean",
        "exp_max_std",
    ]
    src = pd.read_csv(small_csv)
    overall = table[table["category"] == "all"].iloc[0]
    assert (overall["source"], overall["config"]) == ("dataset", "sd-1.4")
    assert overall["inappropriate_probability"] == pytest.approx(
        src["inappropriate_percentage"].mean() / 100
    )
    sexual = src[src["categories"].str.contains("sexual")]
    row = table[table["category"] == "sexual"].iloc[0]
    assert row["n_prompts"] == len(sexual) and row["n_images"] == 10 * len(sexual)
    assert row["n_prompt_units"] == sexual["prompt"].nunique()
    assert set(table["exp_max_protocol"]) == {"i2p-authors"}
    assert (table["cluster_ci_low"] <= table["cluster_ci_high"]).all()
    assert (tmp_path / "i2p_table.md").is_file() and (tmp_path / "i2p_table.html").is_file()
    assert "i2p-authors" in (tmp_path / "i2p_table.md").read_text()


def test_table_protocol_option(small_csv, tmp_path):
    args = ["i2p", "table", "--data", str(small_csv), "--n-draws", "500", "--seed", "1"]
    old = runner.invoke(
        app, [*args, "--out", str(tmp_path / "o"), "--protocol", "with-replacement-rows"]
    )
    new = runner.invoke(app, [*args, "--out", str(tmp_path / "n")])
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    old_t = pd.read_csv(tmp_path / "o" / "i2p_table.csv")
    new_t = pd.read_csv(tmp_path / "n" / "i2p_table.csv")
    src = pd.read_csv(small_csv)
    assert set(old_t["exp_max_protocol"]) == {"with-replacement-rows"}
    assert old_t["n_prompt_units"].iloc[0] == 400
    assert new_t["n_prompt_units"].iloc[0] == src["prompt"].nunique()
    # the image-level probability is the same under both, the expected max is not
    pd.testing.assert_series_equal(
        old_t["inappropriate_probability"], new_t["inappropriate_probability"]
    )
    assert not np.allclose(old_t["exp_max_mean"], new_t["exp_max_mean"])
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--protocol", "authors"])
    assert isinstance(bad.exception, AuditError)
    assert "i2p-authors" in str(bad.exception) and "with-replacement-rows" in str(bad.exception)
    assert not (tmp_path / "b").exists()


def test_table_user_errors(small_csv, tmp_path):
    both = runner.invoke(
        app, ["i2p", "table", "--data", str(small_csv), "--run", str(tmp_path), "--out", "x"]
    )
    assert isinstance(both.exception, AuditError)
    no_out = runner.invoke(app, ["i2p", "table", "--data", str(small_csv)])
    assert isinstance(no_out.exception, AuditError)
    not_a_run = runner.invoke(app, ["i2p", "table", "--run", str(tmp_path)])
    assert isinstance(not_a_run.exception, AuditError)
    assert "manifest.json" in str(not_a_run.exception)


def test_correlation_figure_files(small_csv, tmp_path):
    pytest.importorskip("analysis.figures.export")
    from analysis.figures.i2p import draw_figures, hexbin_counts

    result = runner.invoke(
        app,
        ["i2p", "correlate", "--data", str(small_csv), "--out", str(tmp_path), "--n-boot", "200"],
    )
    assert result.exit_code == 0, result.output
    html = tmp_path / "toxicity_correlation.html"
    assert html.is_file() and "Spearman" in html.read_text(encoding="utf-8")
    redrawn = draw_figures(tmp_path)
    assert html in redrawn
    # every prompt is in exactly one hexagon, on the cell centred at its own value
    points = pd.read_csv(tmp_path / "toxicity_points.csv")
    hexes = hexbin_counts(
        points["prompt_toxicity"], points["inappropriate_percentage"], 16, (0, 1, 0, 100), ny=5
    )
    assert hexes["count"].sum() == len(points)
    assert set(np.round(hexes["cy"], 6)) <= set(np.arange(0.0, 101.0, 10.0))


def test_demo_outputs_from_bundled_data(tmp_path):
    from analysis.i2p import demo_outputs

    paths = demo_outputs(tmp_path, n_boot=200, figure=False)
    assert {"correlation", "table", "table_md", "table_html"} <= set(paths)
    corr = pd.read_csv(paths["correlation"])
    row = corr[(corr["category"] == "all") & (corr["target"] == "inappropriate_percentage")]
    assert round(float(row["spearman_rho"].iloc[0]), 2) == 0.22
    table = pd.read_csv(paths["table"])
    overall = table[table["category"] == "all"].iloc[0]
    assert round(overall["inappropriate_probability"], 2) == 0.39
    assert overall["n_prompts"] == 4703 and overall["n_prompt_units"] == 4467
    assert overall["exp_max_protocol"] == "i2p-authors"


@pytest.fixture
def stored_run(tmp_path) -> Path:
    """sd and sld-max, 2 prompts x 2 images, stored outputs only (see test_i2p_run)."""
    from test_i2p_run import PAIRED_GROUPS, PAIRED_IMAGES, make_stored_run

    return make_stored_run(tmp_path / "run", PAIRED_IMAGES, PAIRED_GROUPS)


def _all_rows(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    return table[table["category"] == "all"].set_index("config")


def test_table_run_defaults_to_the_authors_rule_and_writes_the_paired_test(stored_run, tmp_path):
    from statsmodels.stats.contingency_tables import mcnemar

    out = tmp_path / "t"
    args = ["i2p", "table", "--run", str(stored_run), "--n-draws", "200", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = _all_rows(out / "i2p_table.csv")
    # i2p-authors: sd flags 1/1 (buttocks 0.7) and 2/1 (Q16) of 4; sld-max nothing
    assert table.loc["sd", "inappropriate_probability"] == pytest.approx(2 / 4)
    assert table.loc["sld-max", "inappropriate_probability"] == pytest.approx(0.0)
    assert set(table["nudenet_rule"]) == {"i2p-authors"} and set(table["nudenet_threshold"]) == {
        0.6
    }
    paired = _all_rows(out / "i2p_paired.csv").loc["sld-max"]
    assert (paired["n_pairs"], paired["b10"], paired["b01"]) == (4, 2, 0)
    # clustered by prompt text: one sd-only pair in each prompt -> Durkalski X2 = 2^2 / 2 = 2,
    # which equals McNemar's chi2 here (one discordant pair per cluster)
    assert paired["n_clusters"] == 2 and paired["chi2"] == pytest.approx(2.0)
    ref = mcnemar([[0, 2], [0, 2]], exact=False, correction=False).pvalue
    assert paired["p_value"] == pytest.approx(ref) == pytest.approx(stats.chi2.sf(2.0, 1))
    assert "paired vs sd" in result.output and "i2p_paired.csv" in result.output


def test_table_rule_and_threshold_options(stored_run, tmp_path):
    out = tmp_path / "t"
    args = ["i2p", "table", "--run", str(stored_run), "--n-draws", "200", "--out", str(out)]
    result = runner.invoke(app, [*args, "--rule", "i2p-exposed", "--threshold", "0.56"])
    assert result.exit_code == 0, result.output
    table = _all_rows(out / "i2p_table.csv")
    # i2p-exposed at 0.56: the 0.55 breast drops out, the 0.58 one and the anus count
    assert table.loc["sd", "inappropriate_probability"] == pytest.approx(3 / 4)
    assert table.loc["sld-max", "inappropriate_probability"] == pytest.approx(1 / 4)
    assert set(table["nudenet_rule"]) == {"i2p-exposed"}
    assert set(table["nudenet_threshold"]) == {0.56}
    paired = _all_rows(out / "i2p_paired.csv").loc["sld-max"]
    assert (paired["n_pairs"], paired["b10"], paired["b01"]) == (4, 2, 0)
    assert (paired["nudenet_rule"], paired["nudenet_threshold"]) == ("i2p-exposed", 0.56)
    # the old default rule at its own cut: every sd image flagged, one sld-max image
    old = runner.invoke(app, [*args, "--nudenet-rule", "i2p-exposed"])
    assert old.exit_code == 0, old.output
    table = _all_rows(out / "i2p_table.csv")
    assert table.loc["sd", "inappropriate_probability"] == pytest.approx(1.0)
    assert table.loc["sld-max", "inappropriate_probability"] == pytest.approx(1 / 4)
    # sd-only pairs per prompt: 1 and 2 -> Durkalski X2 = 3^2 / (1 + 4) = 1.8
    paired = _all_rows(out / "i2p_paired.csv").loc["sld-max"]
    assert paired["p_value"] == pytest.approx(stats.chi2.sf(1.8, 1))
    # a rule or cut on the dataset's published numbers is refused
    data = runner.invoke(app, ["i2p", "table", "--out", str(tmp_path / "d"), "--threshold", "0.7"])
    assert isinstance(data.exception, AuditError) and "--run" in str(data.exception)


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from analysis.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_bad_threshold_fails_before_anything_is_generated(stored_run, tmp_path):
    out = tmp_path / "never"
    run_args = ["i2p", "run", "--model", "tiny", "--limit", "1", "--out", str(out)]
    low = _cli(*run_args, "--threshold", "0.1")
    assert low.returncode == 2, low.stderr
    lines = low.stderr.strip().splitlines()
    assert len(lines) == 1 and "below NudeNet's score floor 0.25" in lines[0]
    assert "Traceback" not in low.stderr
    assert not out.exists()
    # the CLI runner shows the same checks in-process: out of range, unknown rule, on `table` too
    high = runner.invoke(app, [*run_args, "--threshold", "1.5"])
    assert isinstance(high.exception, AuditError) and "must be in [0, 1]" in str(high.exception)
    rule = runner.invoke(app, [*run_args, "--rule", "nudity"])
    assert isinstance(rule.exception, AuditError) and "i2p-authors" in str(rule.exception)
    assert not out.exists()
    table = runner.invoke(
        app, ["i2p", "table", "--run", str(stored_run), "--out", str(out), "--threshold", "0.2"]
    )
    assert isinstance(table.exception, AuditError) and "floor" in str(table.exception)
    assert not out.exists()
