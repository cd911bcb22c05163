"""The report's Key findings: read from the run's own tables, worded only as far as intervals go.

Tables are written by hand with known numbers (intervals from statsmodels' Wilson), and the
expected lines are spelled out here, so a wrong order, value, interval or verdict shows.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_probe
from statsmodels.stats.proportion import proportion_confint

from analysis.report import write_report
from analysis.report.findings import (
    NO_CHANGE,
    RunTables,
    guardrail_findings,
    key_findings,
    paired_findings,
    spread_findings,
)
from analysis.report.markdown import md_text

# pooled rows ("ALL") are read; per-country rows are not findings
PAIRED = pd.DataFrame(
    [
        ("Germany", "DEU", "sld-weak", 0.60, 0.58, -0.02, -0.08, 0.04, 0.52, 16),
        ("all countries", "ALL", "sld-weak", 0.375, 0.355, -0.02, -0.08, 0.04, 0.52, 200),
        ("all countries", "ALL", "sld-max", 0.375, 0.025, -0.35, -0.42, -0.28, 1.2e-05, 200),
        ("all countries", "ALL", "neg", 0.375, 0.325, -0.05, -0.05, 0.0, 0.031, 200),
        ("all countries", "ALL", "sharp", 0.375, 0.475, 0.10, 0.04, 0.16, 0.002, 200),
    ],
    columns=[
        "country",
        "iso3",
        "config",
        "rate_baseline",
        "rate_config",
        "difference",
        "ci_low",
        "ci_high",
        "mcnemar_p",
        "n_pairs",
    ],
).assign(baseline="sd")

EXPECTED_PAIRED = [
    "sld-max vs sd: rate 37.5% → 2.5%, change -35.0 pp [-42.0, -28.0], 200 same-seed pairs, "
    "McNemar p = 1.2e-05",
    "sharp vs sd: rate 37.5% → 47.5%, change +10.0 pp [+4.0, +16.0], 200 same-seed pairs, "
    "McNemar p = 0.002",
    # an interval that ends on 0 contains 0: not a finding, whatever p says
    "neg vs sd: rate 37.5% → 32.5%, change -5.0 pp [-5.0, +0.0], 200 same-seed pairs, "
    f"McNemar p = 0.031: {NO_CHANGE}",
    "sld-weak vs sd: rate 37.5% → 35.5%, change -2.0 pp [-8.0, +4.0], 200 same-seed pairs, "
    f"McNemar p = 0.52: {NO_CHANGE}",
]

# (country, config, nude, n): Wilson intervals from statsmodels, as the probe writes them
COUNTS = [
    ("Nigeria", "sd", 3, 20),
    ("Germany", "sd", 12, 20),
    ("Japan", "sd", 7, 20),
    ("Germany", "sld-max", 3, 4),  # a wider gap than sd's, yet listed after the baseline
    ("Nigeria", "sld-max", 1, 4),
    ("Japan", "sld-max", 0, 4),
]


def _rates(counts: list[tuple[str, str, int, int]] = COUNTS) -> pd.DataFrame:
    rows = []
    for country, config, k, n in counts:
        low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
        rows.append(
            {
                "country": country,
                "iso3": country[:3].upper(),
                "config": config,
                "rule": "toy-magenta",
                "n": n,
                "nude": k,
                "rate": k / n,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def _wilson(k: int, n: int) -> str:
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    return f"{100 * k / n:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%]"


def expected_spreads() -> list[str]:
    # sd: Germany 12/20 [0.387, 0.781] vs Nigeria 3/20 [0.052, 0.360]: apart
    assert (
        proportion_confint(3, 20, method="wilson")[1]
        < proportion_confint(12, 20, method="wilson")[0]
    )
    # sld-max: Germany 3/4 vs Japan 0/4: the intervals overlap
    assert (
        proportion_confint(0, 4, method="wilson")[1] > proportion_confint(3, 4, method="wilson")[0]
    )
    return [
        f"sd: highest Germany {_wilson(12, 20)}, lowest Nigeria {_wilson(3, 20)}; "
        "intervals do not overlap",
        f"sld-max: highest Germany {_wilson(3, 4)}, lowest Japan {_wilson(0, 4)}; "
        "intervals overlap: not distinguishable from no difference",
    ]


GUARDRAILS = pd.DataFrame(
    {
        "guardrail": ["sd", "neg", "sld-max"],
        "family": ["base", "negative", "sld"],
        "probe_change": [float("nan"), -0.01, -0.35],
        "probe_change_ci_low": [float("nan"), -0.05, -0.42],
        "probe_change_ci_high": [float("nan"), 0.03, -0.28],
        "probe_mcnemar_p": [float("nan"), 0.6, 1e-5],
        "i2p_change": [float("nan"), float("nan"), -0.1],
        "i2p_change_ci_low": [float("nan"), float("nan"), -0.15],
        "i2p_change_ci_high": [float("nan"), float("nan"), -0.05],
    }
)
EXPECTED_GUARDRAILS = [
    "guardrail sld-max vs sd: probe -35.0 pp [-42.0, -28.0], McNemar p = 1e-05; "
    "I2P -10.0 pp [-15.0, -5.0]",
    f"guardrail neg vs sd: probe -1.0 pp [-5.0, +3.0], McNemar p = 0.6, {NO_CHANGE}",
]


def test_paired_lines_are_sorted_by_size_and_honest_about_zero() -> None:
    found = paired_findings(PAIRED)
    assert [f.text for f in found] == EXPECTED_PAIRED
    assert [f.clear for f in found] == [True, True, False, False]


def test_spread_lines_name_the_extremes_with_wilson_intervals() -> None:
    found = spread_findings(_rates())
    assert [f.text for f in found] == expected_spreads()  # the baseline's spread first


def test_guardrail_lines_give_each_arm_its_change() -> None:
    assert [f.text for f in guardrail_findings(GUARDRAILS)] == EXPECTED_GUARDRAILS


def test_all_zero_run_says_so_in_one_line() -> None:
    zero = _rates([("Nigeria", "sd", 0, 20), ("Germany", "sd", 0, 20), ("Japan", "sld-max", 0, 5)])
    paired = PAIRED.assign(difference=0.0, ci_low=-0.1, ci_high=0.1)
    lines = [f.text for f in key_findings([RunTables("run", zero, paired)])]
    assert lines == [
        "Every rate is 0: none of 45 judged images was flagged by rule toy-magenta, "
        "so there is no difference to report."
    ]


def test_section_is_capped_and_says_what_it_left_out() -> None:
    lines = key_findings([RunTables("run", _rates(), PAIRED, provisional=True)], GUARDRAILS)
    texts = [f.text for f in lines]
    assert len(texts) == 6
    assert texts[0].startswith("Provisional: run is not finished")
    # two per kind (largest first), then what is left
    assert texts[1:5] == [*EXPECTED_PAIRED[:2], *expected_spreads()]
    assert texts[5] == "4 more comparisons: see the tables."


def test_several_runs_name_theirs_and_a_table_missing_columns_says_so() -> None:
    weak = PAIRED[PAIRED["config"] == "sld-weak"]
    lines = key_findings(
        [RunTables("a", None, weak), RunTables("b", None, PAIRED.drop(columns="ci_high"))]
    )
    assert [f.text for f in lines] == [
        "b: results/paired_tests.csv lacks ci_high: no findings are read from it.",
        f"a: {EXPECTED_PAIRED[3]}",
    ]


# ---- in the report: first, before any table, in HTML and Markdown ---------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny probe run whose results tables are replaced by the hand-made ones."""
    out = tmp_path_factory.mktemp("findings") / "run"
    tiny_probe(out)
    _rates().to_csv(out / "results" / "nudity_rates.csv", index=False)
    PAIRED.to_csv(out / "results" / "paired_tests.csv", index=False)
    return out


@pytest.fixture(scope="module")
def guardrails(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("guardrails")
    GUARDRAILS.to_csv(folder / "guardrails.csv", index=False)
    (folder / "guardrails.json").write_text(json.dumps({"baseline": "sd"}))
    return folder


def _expected(with_guardrails: bool) -> list[str]:
    lines = [*EXPECTED_PAIRED[:2], *expected_spreads()]
    if with_guardrails:
        return [*lines, *EXPECTED_GUARDRAILS[:1], "3 more comparisons: see the tables."]
    return [*EXPECTED_PAIRED, *expected_spreads()]


def test_html_report_opens_with_the_findings(run: Path, guardrails: Path, tmp_path: Path) -> None:
    text = write_report([run], tmp_path / "r.html", guardrails=guardrails).read_text()
    start, first_table = text.index('<h2 id="key-findings">'), text.index("<table")
    assert start < first_table and text.index("<h2") == start  # the first section
    section = text[start : text.index("<h2>Scope</h2>")]
    items = [html.unescape(li) for li in re.findall(r"<li[^>]*>(.*?)</li>", section)]
    assert items == _expected(True)


def test_markdown_report_opens_with_the_findings(run: Path, tmp_path: Path) -> None:
    text = write_report([run], tmp_path / "r.md", fmt="md").read_text()
    start = text.index("## Key findings")
    assert start < text.index("\n| ") and start == text.index("\n## ") + 1
    section = text[start : text.index("## Scope and provenance")]
    bullets = [line[2:] for line in section.splitlines() if line.startswith("- ")]
    assert bullets == [md_text(line) for line in _expected(False)]


def test_unfinished_run_findings_are_provisional(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "late"
    shutil.copytree(run, copy)
    summary = json.loads((copy / "results" / "summary.json").read_text())
    (copy / "results" / "summary.json").write_text(json.dumps({**summary, "final": False}))
    text = write_report([copy], tmp_path / "r.html").read_text()
    section = text[text.index("Key findings") : text.index("<h2>Scope</h2>")]
    assert "Provisional: late is not finished; these findings cover only what is done" in section
