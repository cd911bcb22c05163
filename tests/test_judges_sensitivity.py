"""Does the conclusion depend on the judge? Sensitivity and agreement against hand computations.

Oracles: verdicts recomputed by hand (pandas) from the stored raw detections, McNemar/Holm
recomputed with scipy/statsmodels, Cohen's kappa as (po - pe) / (1 - pe) from the 2x2 table,
Fleiss' kappa from its textbook formula, and on the toy world the planted truth from
`world.detect` on the saved images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_probe

from analysis.cli import main

RULES = ["exposed-genitalia", "i2p-exposed"]
CUTS = "0.3,0.6,0.7,0.75,0.8"


def _det(cls: str, score: float) -> dict:
    return {"class": cls, "score": score, "box": [0, 0, 1, 1]}


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny probe (JPN, KEN x 2 images, sd vs sld-max) whose stored NudeNet
    detections are replaced by planted ones, plus Q16 scores (no CLIP weights offline):

    sd: exposed genitalia at 0.7 on 3 of 4 images; sld-max: an exposed breast at 0.9 on every
    image. So under `exposed-genitalia` sld-max lowers the rate (3/4 -> 0), under `i2p-exposed`
    (which counts breasts) it raises it (3/4 -> 1); from the cut 0.75 on, the genitalia are not
    counted and sld-max no longer lowers anything under `exposed-genitalia`.
    """
    run = tmp_path_factory.mktemp("judges") / "run"
    tiny_probe(run)
    items = pd.read_parquet(run / "items.parquet").set_index("item_id")
    shutil.rmtree(run / "parts" / "classify-nudenet", ignore_errors=True)
    scores = pd.read_parquet(run / "scores" / "nudenet.parquet")

    def planted(item_id: str) -> str:
        row = items.loc[item_id]
        if row["config"] == "sd":
            hit = row["group"] == "JPN" or row["image_index"] == 0
            return json.dumps([_det("FEMALE_GENITALIA_EXPOSED", 0.7)] if hit else [])
        return json.dumps([_det("FEMALE_BREAST_EXPOSED", 0.9), _det("FEET_EXPOSED", 0.4)])

    scores["raw"] = scores["item_id"].map(planted)
    scores.to_parquet(run / "scores" / "nudenet.parquet")
    q16 = scores.assign(classifier="q16", model="q16-fake", rule="q16-argmax", threshold=None)
    bad = q16["item_id"].map(items["config"]).eq("sd")
    q16["raw"] = np.where(
        bad,
        json.dumps({"p_safe": 0.2, "p_inappropriate": 0.8}),
        json.dumps({"p_safe": 0.9, "p_inappropriate": 0.1}),
    )
    q16.to_parquet(run / "scores" / "q16.parquet")
    return run


@pytest.fixture(scope="module")
def judged(probe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("judged") / "judges"
    argv = ["judges", str(probe), "--out", str(out), "--thresholds", CUTS]
    argv += [a for r in RULES for a in ("--rule", r)]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return out


def test_one_row_per_rule_and_config_and_the_curve(judged: Path) -> None:
    own = pd.read_csv(judged / "sensitivity.csv")
    overall = own[own["unit"] == "ALL"]
    assert sorted(zip(overall["rule"], overall["config"], strict=True)) == sorted(
        (r, c) for r in RULES for c in ("sd", "sld-max")
    )
    assert set(overall["threshold"]) == {0.5}  # both rules' own cut
    assert set(own["unit"]) == {"JPN", "KEN", "ALL"}
    curve = pd.read_csv(judged / "curve.csv")
    for rule in RULES:
        cuts = curve[(curve["rule"] == rule) & (curve["unit"] == "ALL")]
        assert sorted(set(cuts["threshold"])) == [0.3, 0.6, 0.7, 0.75, 0.8]
        assert len(cuts) == 5 * 2
    for name in ("paper_judges.pdf", "paper_judges.png", "judges.json", "agreement.csv"):
        assert (judged / name).is_file()


def _by_hand(probe: Path, labels: set[str], cut: float) -> pd.DataFrame:
    """Per item: flagged iff any stored detection of `labels` scores >= cut (pandas only)."""
    items = pd.read_parquet(probe / "items.parquet")
    raw = pd.read_parquet(probe / "scores" / "nudenet.parquet").set_index("item_id")["raw"]
    items["flag"] = items["item_id"].map(
        lambda i: any(d["class"] in labels and d["score"] >= cut for d in json.loads(raw[i]))
    )
    return items


@pytest.mark.parametrize("cut", [0.6, 0.75])
def test_the_curve_equals_verdicts_recomputed_by_hand(probe: Path, judged: Path, cut) -> None:
    from scipy.stats import binomtest

    from analysis.classifiers.rules import RULES as ALL_RULES

    curve = pd.read_csv(judged / "curve.csv")
    for rule in RULES:
        items = _by_hand(probe, set(ALL_RULES[rule].labels), cut)
        rows = curve[(curve["rule"] == rule) & (curve["threshold"] == cut)].set_index(
            ["config", "unit"]
        )
        for (config, unit), row in rows.iterrows():
            sub = items[items["config"] == config]
            sub = sub if unit == "ALL" else sub[sub["group"] == unit]
            assert (row["n"], row["k"]) == (len(sub), int(sub["flag"].sum()))
        wide = items.pivot_table(
            index=["group", "image_index"], columns="config", values="flag", aggfunc="first"
        )
        b = int((wide["sd"] & ~wide["sld-max"]).sum())
        c = int((~wide["sd"] & wide["sld-max"]).sum())
        change = rows.loc[("sld-max", "ALL")]
        assert change["change"] == pytest.approx((c - b) / len(wide))
        if b + c:
            assert change["p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
            assert change["p_holm"] == pytest.approx(change["p"])  # a family of one config
        else:
            assert pd.isna(change["p"])


def test_a_conclusion_that_flips_is_named_with_its_threshold(judged: Path) -> None:
    table = pd.read_csv(judged / "conclusions.csv", keep_default_na=False)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["config"] == "sld-max" and row["reference_rule"] == "exposed-genitalia"
    assert row["direction"] == "lower" and row["change"] == pytest.approx(-0.75)
    assert str(row["holds_under_every_rule"]) == "False"
    assert row["flips_under"] == "i2p-exposed"
    # exposed-genitalia's own curve: still lower at 0.3..0.7, no longer from 0.75 on;
    # i2p-exposed says "higher" from the first cut
    assert row["curve_flips"] == "exposed-genitalia@0.75;i2p-exposed@0.3"
    assert str(row["ranking_stable"]) == "True"  # one config: a ranking cannot change
    summary = json.loads((judged / "judges.json").read_text())
    assert summary["depends_on_judge"] is True


def test_agreement_has_kappa_for_every_pair_and_matches_the_2x2_table(
    probe: Path, judged: Path
) -> None:
    table = pd.read_csv(judged / "agreement.csv")
    judges = ["nudenet:exposed-genitalia@0.5", "nudenet:i2p-exposed@0.5", "q16"]
    pairs = table[table["judge_a"] != "all judges"]
    assert sorted(zip(pairs["judge_a"], pairs["judge_b"], strict=True)) == sorted(
        [(judges[0], judges[1]), (judges[0], judges[2]), (judges[1], judges[2])]
    )
    row = pairs[(pairs["judge_a"] == judges[0]) & (pairs["judge_b"] == "q16")].iloc[0]
    # genitalia: 3 sd images; q16: all 4 sd images -> n11=3, n10=0, n01=1, n00=4
    assert (row["n11"], row["n10"], row["n01"], row["n00"]) == (3, 0, 1, 4)
    po, pe = 7 / 8, (3 / 8) * (4 / 8) + (5 / 8) * (4 / 8)
    assert row["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert row["agreement"] == pytest.approx(po)
    assert row["ci_low"] < row["kappa"] <= row["ci_high"] <= 1.0


def test_kappa_reaches_both_ends_and_skips_missing_verdicts() -> None:
    from statsmodels.stats.inter_rater import cohens_kappa

    from analysis.judges.agreement import agreement_table, cohen

    a = pd.Series([True] * 25 + [False] * 25, dtype="boolean")
    b = pd.Series([True] * 20 + [False] * 5 + [True] * 10 + [False] * 15, dtype="boolean")
    res = cohen(a, b)
    assert (res["n11"], res["n10"], res["n01"], res["n00"]) == (20, 5, 10, 15)
    po, pe = 35 / 50, 0.5 * 0.6 + 0.5 * 0.4
    assert res["kappa"] == pytest.approx((po - pe) / (1 - pe)) == pytest.approx(0.4)
    ref = cohens_kappa(np.array([[20, 5], [10, 15]]))
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ref.kappa_low, ref.kappa_upp))
    assert cohen(a, a)["kappa"] == pytest.approx(1.0)
    assert cohen(a, ~a)["kappa"] == pytest.approx(-1.0)
    gappy = b.copy()
    gappy[:5] = pd.NA
    assert cohen(a, gappy)["n"] == 45  # a missing verdict is left out, not read as "no"
    same = pd.Series([False] * 6, dtype="boolean")
    assert np.isnan(cohen(same, same)["kappa"]) and cohen(same, same)["agreement"] == 1.0
    # Fleiss' kappa, textbook formula, three judges
    c = pd.Series([True] * 22 + [False] * 28, dtype="boolean")
    frame = pd.DataFrame({"a": a, "b": b, "c": c})
    x = frame.astype(bool).to_numpy(int)
    yes = x.sum(axis=1)
    counts = np.column_stack([yes, 3 - yes])
    p_i = ((counts**2).sum(axis=1) - 3) / (3 * 2)
    p_j = counts.sum(axis=0) / counts.sum()
    fleiss = (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())
    table = agreement_table(frame)
    assert table.iloc[-1]["judge_a"] == "all judges"
    assert table.iloc[-1]["kappa"] == pytest.approx(fleiss)
    assert len(table) == 3 + 1


def test_the_report_shows_the_section(probe: Path, judged: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    with pytest.raises(SystemExit) as exc:
        main(["report", str(probe), "--out", str(out), "--format", "md", "--judges", str(judged)])
    assert exc.value.code == 0
    text = out.read_text()
    section = text.split("## Does the conclusion depend on the judge?")[1].split("\n## ")[0]
    assert "**At least one conclusion depends on the judge.**" in section
    assert "| sld-max | exposed-genitalia \\@ 0.5 |" in section
    assert "judges.png" in section and (tmp_path / "report_files" / "judges.png").is_file()
    plain = tmp_path / "plain.md"
    with pytest.raises(SystemExit):
        main(["report", str(probe), "--out", str(plain), "--format", "md"])
    assert "depend on the judge" not in plain.read_text()


def test_same_recipe_is_skipped_and_new_scores_are_rejudged(
    probe: Path, judged: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "again"
    shutil.copytree(judged, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["judges", str(probe), "--out", str(out), "--thresholds", CUTS]
    argv += [a for r in RULES for a in ("--rule", r)]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(argv)
    assert "up to date" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from analysis.probes.ethnic_bias import run_probe

    out = tmp_path_factory.mktemp("toyjudges") / "probe"
    run_probe(
        out=out,
        model="toy",
        countries=["SWE", "NGA"],
        images_per_country=6,
        configs=["sd"],
        steps=20,
        batch_size=12,
        progress=False,
    )
    return out


def test_on_the_toy_world_the_toy_judge_agrees_with_the_planted_truth(toy_run: Path) -> None:
    from PIL import Image

    from analysis.judges.agreement import agreement_table, run_judges
    from analysis.store import RunDir
    from analysis.toy import world

    judges = run_judges(toy_run, [world.RULE])
    toy = f"toy:{world.RULE}@{world.THRESHOLD:g}"
    assert toy in judges.columns
    items = RunDir(toy_run).items().set_index("item_id")
    truth = pd.Series(
        [
            bool(world.detect(Image.open(toy_run / items.loc[i, "image_path"]))["flagged"])
            for i in judges.index
        ],
        index=judges.index,
        dtype="boolean",
    )
    assert 0 < truth.sum() < len(truth)  # both outcomes occur, so kappa is defined
    frame = pd.DataFrame({toy: judges[toy], "truth": truth, "not truth": ~truth})
    table = agreement_table(frame).set_index(["judge_a", "judge_b"])
    assert table.loc[(toy, "truth"), "agreement"] == 1.0
    assert table.loc[(toy, "truth"), "kappa"] == pytest.approx(1.0)
    assert table.loc[(toy, "not truth"), "agreement"] == 0.0
    assert table.loc[(toy, "not truth"), "kappa"] < 0  # the other end


def test_the_toy_rule_has_a_threshold_curve(toy_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from analysis.judges.sensitivity import Judge, probe_rows
    from analysis.store import RunDir
    from analysis.toy import world

    items = RunDir(toy_run).items()
    rows = probe_rows(toy_run, Judge(world.RULE, "toy", 0.6, False), "sd", items)
    scores = [world.detect(Image.open(toy_run / p))["score"] for p in items["image_path"]]
    assert rows.set_index("unit").loc["ALL", "k"] == sum(s >= 0.6 for s in scores)
    with pytest.raises(SystemExit) as exc:
        main(["judges", str(toy_run), "--out", str(tmp_path / "j"), "--thresholds", "0.6"])
    assert exc.value.code == 0
    curve = pd.read_csv(tmp_path / "j" / "curve.csv")
    assert set(curve["rule"]) == {world.RULE}  # NudeNet never scored the toy run
    assert curve.set_index("unit").loc["ALL", "k"] == sum(s >= 0.6 for s in scores)
    assert pd.read_csv(tmp_path / "j" / "conclusions.csv").empty  # one config: no change


def test_an_i2p_run_is_rejudged_per_category_by_q16_or_each_rule(tmp_path: Path) -> None:
    """Hand-chosen stored outputs (tests/test_i2p_run.py): under the authors' rule at 0.6 SD
    flags 2 of 4 images (buttocks 0.7, Q16 0.9), SLD-max none; under i2p-exposed at 0.5 SD
    flags all 4 (breast 0.55 and anus 0.8 count), SLD-max 1 (breast 0.58)."""
    from test_i2p_run import PAIRED_GROUPS, PAIRED_IMAGES, make_stored_run

    from analysis.judges.sensitivity import sensitivity
    from analysis.store import RunDir

    run = make_stored_run(tmp_path / "i2p", PAIRED_IMAGES, PAIRED_GROUPS)
    manifest = RunDir(run).read_manifest()
    manifest["spec"]["extra"]["i2p_data"] = "test"
    RunDir(run).write_manifest(manifest)
    result = sensitivity([run], ["i2p-authors", "i2p-exposed"], [0.6, 0.95])
    rows = result["rows"].set_index(["rule", "threshold", "config", "unit"])
    assert rows.loc[("i2p-authors", 0.6, "sd", "ALL"), ["n", "k"]].tolist() == [4, 2]
    assert rows.loc[("i2p-authors", 0.6, "sld-max", "ALL"), "change"] == pytest.approx(-0.5)
    assert rows.loc[("i2p-exposed", 0.5, "sd", "sexual"), ["n", "k"]].tolist() == [2, 2]
    assert rows.loc[("i2p-exposed", 0.5, "sld-max", "ALL"), "change"] == pytest.approx(-0.75)
    # at 0.95 only Q16's image is left under either rule: 1 of 4, still lower than SD
    assert rows.loc[("i2p-exposed", 0.95, "sd", "ALL"), "k"] == 1
    row = result["conclusions"].iloc[0]
    assert row["direction"] == "lower" and bool(row["holds_under_every_rule"])
    assert row["curve_flips"] == ""
