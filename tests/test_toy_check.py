"""`toy check`: each known-answer row measures what it says, and each can fail.

The statistics rows are checked against statsmodels/scipy on planted Bernoulli data (their truth
known exactly); the guardrail rows on one small real run of the toy model, then with each
guardrail broken (reversed SLD, a filter that blocks nothing, a text filter that matches
nothing), which must fail its row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.errors import AuditError
from analysis.toy import check
from analysis.toy.check import Sizes

SMALL = Sizes(
    images_per_country=4,
    guard_countries=3,
    guard_images=8,
    explicit_countries=2,
    coverage_countries=2,
    coverage_large=16,
    coverage_runs=2,
    coverage_n=8,
    steps=20,
    batch_size=16,
    esd=False,
    closed_form=False,
)
CALIBRATION = ["SWE", "GBR", "DEU", "RUS", "NGA", "IDN"]


def _bernoulli(rates: dict[str, float], n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {"group": g, "image_index": i, "verdict": bool(v), "config": "sd"}
        for g, p in rates.items()
        for i, v in enumerate(rng.random(n) < p)
    ]
    return pd.DataFrame(rows)


def test_interval_coverage_agrees_with_statsmodels_wilson() -> None:
    from statsmodels.stats.proportion import proportion_confint

    table = _bernoulli({"A": 0.2, "B": 0.6}, 100 + 30 * 5)
    share, total = check.interval_coverage(table, large=100, runs=30, n=5)
    hits = 0
    for _, g in table.groupby("group"):
        v = g.sort_values("image_index")["verdict"].to_numpy()
        truth = v[:100].mean()
        for j in range(30):
            k = v[100 + 5 * j : 105 + 5 * j].sum()
            lo, hi = proportion_confint(k, 5, alpha=0.05, method="wilson")
            hits += lo <= truth <= hi
    assert total == 60 and share == pytest.approx(hits / 60)


def test_coverage_row_passes_wilson_and_fails_a_too_narrow_interval() -> None:
    """Planted Bernoulli rates: Wilson's 95% intervals cover ~95%; 68% intervals cannot pass."""
    from statsmodels.stats.proportion import proportion_confint

    sizes = Sizes(coverage_large=4000, coverage_runs=150, coverage_n=8)
    table = _bernoulli({"A": 0.15, "B": 0.4, "C": 0.65}, 4000 + 150 * 8, seed=1)
    assert check.coverage_row(table, sizes)["passed"]

    def narrow(k: int, n: int) -> tuple[float, float]:
        return proportion_confint(k, n, alpha=0.32, method="wilson")

    row = check.coverage_row(table, sizes, interval=narrow)
    assert not row["passed"] and row["measured"] < 0.85


def test_calibration_rows_against_scipy_and_hand_computed_amplification() -> None:
    from scipy.stats import spearmanr

    from analysis.toy.world import planted_table

    planted = planted_table().set_index("iso3")["planted_rate"]
    counts = {"SWE": 6, "DEU": 5, "NGA": 1, "IDN": 0}  # of 8 images each
    rows = [
        {"group": g, "config": "sd", "verdict": i < k, "image_index": i}
        for g, k in counts.items()
        for i in range(8)
    ]
    rows += [
        {"group": "harmless", "config": "sd", "verdict": False, "image_index": i} for i in range(8)
    ]
    train = pd.Series({"SWE": 0.5, "DEU": 0.6, "NGA": 0.25, "IDN": 0.2})
    out, amp = check.calibration_rows(pd.DataFrame(rows), train)
    got = {r["check"].split(":")[0] + ":" + r["check"].split(":")[1][:20]: r for r in out}
    rates = pd.Series(counts) / 8
    rho = spearmanr(planted.loc[rates.index], rates).statistic
    spearman = next(r for r in out if r["check"].startswith("calibration: Spearman"))
    assert spearman["measured"] == pytest.approx(round(rho, 4))
    mae = next(r for r in out if r["check"].startswith("calibration: mean"))
    assert mae["measured"] == pytest.approx(
        round((rates - planted.loc[rates.index]).abs().mean(), 4)
    )
    swe = amp.set_index("iso3").loc["SWE"]
    assert swe["amplification"] == pytest.approx(0.75 / 0.5)
    # Wilson for 6/8 by hand: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, p = 1.959963984540054, 8, 0.75
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert swe["amp_low"] == pytest.approx((centre - half) / (1 + z * z / n) / 0.5)
    assert swe["amp_high"] == pytest.approx((centre + half) / (1 + z * z / n) / 0.5)
    assert got  # every row has a check name


@pytest.fixture(scope="module")
def small_check(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, pd.DataFrame]:
    out = tmp_path_factory.mktemp("toycheck") / "check"
    table = check.run_check(
        out, sizes=SMALL, countries=CALIBRATION, guidance=("sld-max",), progress=False
    )
    return out, table.set_index("check")


def _row(table: pd.DataFrame, start: str) -> pd.Series:
    hits = table[table.index.str.startswith(start)]
    assert len(hits) == 1, (start, list(table.index))
    return hits.iloc[0]


def test_small_toy_check_passes_its_guardrail_rows_and_writes_the_table(small_check) -> None:
    out, table = small_check
    written = pd.read_csv(out / "known_answers.csv")
    assert list(written.columns) == ["check", "target", "measured", "passed"]
    for start in (
        "guardrail sld-max (magenta): paired change",
        "guardrail image-filter (magenta): paired change",
        "guardrail text-filter (blocks 'magenta')",
        "guardrail text-filter: change on the country prompts",
        "harmless prompts: sd rate",
    ):
        assert _row(table, start)["passed"], start
    assert _row(table, "guardrail text-filter: change on the country")["measured"].startswith(
        "change +0.0000"
    )
    amp = pd.read_csv(out / "amplification.csv")
    assert sorted(amp["iso3"]) == sorted(CALIBRATION)


def test_a_filter_that_blocks_nothing_and_a_blind_text_filter_fail(
    small_check, monkeypatch
) -> None:
    out, _ = small_check
    base = out / "guardrails" / "run"
    arms = {"image-filter": (base, "sd+filter"), "text-filter": (base, "sd+text-filter")}
    real = check._verdicts

    def no_filter(run, classifier="toy"):  # type: ignore[no-untyped-def]
        table = real(run, classifier)
        if classifier == "toy-filter":
            table["verdict"] = False
        return table

    monkeypatch.setattr(check, "_verdicts", no_filter)
    monkeypatch.setattr(
        "analysis.i2p.text_filter.text_filter", lambda prompts, terms: np.zeros(len(prompts), bool)
    )
    rows = pd.DataFrame(check.guardrail_rows(arms, (base, "sd"))).set_index("check")
    assert not _row(rows, "guardrail image-filter (magenta): paired change")["passed"]
    assert not _row(rows, "guardrail text-filter (blocks 'magenta')")["passed"]


def test_toy_check_catches_a_reversed_sld(tmp_path, monkeypatch) -> None:
    """SLD pushing towards the concept instead of away must fail its known-answer row."""
    import analysis.generation.sampler as sampler

    original = sampler.sld_noise_guidance

    def reversed_guidance(eps_u, eps_p, eps_s, momentum, step, params):  # type: ignore[no-untyped-def]
        guided, momentum = original(eps_u, eps_p, eps_s, momentum, step, params)
        return 2 * (eps_p - eps_u) - guided, momentum  # + gamma instead of - gamma

    monkeypatch.setattr(sampler, "sld_noise_guidance", reversed_guidance)
    sizes = Sizes(**{**SMALL.__dict__, "coverage_large": 8, "coverage_runs": 1})
    broken = check.run_check(
        tmp_path / "broken",
        sizes=sizes,
        countries=CALIBRATION[:2],
        guidance=("sld-max",),
        progress=False,
    ).set_index("check")
    assert not _row(broken, "guardrail sld-max (magenta): paired change")["passed"]


def test_toy_check_refuses_a_model_without_a_planted_world(tmp_path) -> None:
    with pytest.raises(AuditError, match="no planted world"):
        check.run_check(tmp_path / "out", model="tiny")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("passed", [True, False])
def test_toy_check_command_exits_1_on_any_failed_row(tmp_path, capsys, monkeypatch, passed) -> None:
    from analysis.cli import main

    table = pd.DataFrame(
        [
            {"check": "a", "target": "t", "measured": 1, "passed": True},
            {"check": "b", "target": "t", "measured": 2, "passed": passed},
        ]
    )
    monkeypatch.setattr(check, "run_check", lambda *a, **k: table)
    with pytest.raises(SystemExit) as exc:
        main(["toy", "check", "--out", str(tmp_path / "out")])
    assert (exc.value.code or 0) == (0 if passed else 1)
    out = capsys.readouterr().out
    assert ("all checks passed" in out) == passed and ("1 check(s) FAILED" in out) != passed
