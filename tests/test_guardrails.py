"""Guardrail table: arms across runs paired by seed, numbers checked against statsmodels/scipy
and a direct cluster bootstrap, the filter arm, the cost join and readable outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_probe
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from analysis.errors import AuditError
from analysis.guardrails import arms_of, compare_guardrails, guardrail_table
from analysis.guardrails.arms import Arm
from analysis.guardrails.cost import join_costs
from analysis.guardrails.outputs import readable_table
from analysis.store import RunDir, resolve_shard
from analysis.store.parts import PartWriter


def _fake_verdicts(seed: int):
    """load_verdicts stand-in: a verdict drawn per (run, config, prompt, image) from `seed`."""
    from analysis.classifiers import load_verdicts as real

    def fake(run, classifier="nudenet", rule="exposed-genitalia", threshold=None):
        table = real(run, classifier, rule, threshold)
        unet_run = "esd" in str(run)
        p = {"sd": 0.7, "sld-max": 0.2}.get
        rng = np.random.default_rng(seed)
        draws = rng.random(len(table))  # same draws in both runs: paired, correlated verdicts
        rate = table["config"].map(lambda c: 0.4 if unet_run else p(c, 0.5))
        table["verdict"] = pd.array(draws < rate.to_numpy(), dtype="boolean")
        return table

    return fake


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A tiny probe with sd + sld-max and the same probe with another UNet (sd only)."""
    from analysis.generation.tiny import tiny_components

    root = tmp_path_factory.mktemp("guardrails")
    base = root / "base"
    tiny_probe(base, images_per_country=6, countries=["JPN", "KEN", "BRA"])
    unet = tiny_components(seed=0)["unet"]
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01)
    from safetensors.torch import save_file

    weights = root / "esd-nudity.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(weights))
    other = root / "esd"
    tiny_probe(
        other,
        images_per_country=6,
        countries=["JPN", "KEN", "BRA"],
        configs=["sd"],
        unet=str(weights),
    )
    return base, other


def test_arms_are_named_by_model_and_paired_by_seed_not_item_id(two_models) -> None:
    base, other = two_models
    arms = arms_of([base, other])
    assert [a.name for a in arms] == ["sd", "sld-max", "tiny+esd-nudity.safetensors:sd"]
    assert [a.family for a in arms] == ["baseline", "guidance", "erasure / other weights"]
    # item ids differ (they hash the weights) but (prompt, seed, image index) pair one to one
    a, b = RunDir(base).items(), RunDir(other).items()
    a = a[a["config"] == "sd"]
    assert not set(a["item_id"]) & set(b["item_id"])
    assert len(a.merge(b, on=["prompt_id", "seed", "image_index"])) == len(a) == 18


def test_probe_columns_equal_statsmodels_on_the_paired_table(two_models, monkeypatch) -> None:
    import analysis.classifiers

    base, other = two_models
    monkeypatch.setattr(analysis.classifiers, "load_verdicts", _fake_verdicts(3))
    arms = arms_of([base, other])
    table = guardrail_table(arms).set_index("guardrail")
    fake = _fake_verdicts(3)
    key = ["prompt_id", "seed", "image_index"]
    sd = fake(base).query("config == 'sd'")[[*key, "verdict"]]
    for name, run, cfg in (("sld-max", base, "sld-max"), (arms[2].name, other, "sd")):
        arm = fake(run)
        arm = arm.loc[arm["config"] == cfg, [*key, "verdict"]]
        pairs = sd.merge(arm, on=key, suffixes=("_b", "_a"))
        x, y = pairs["verdict_b"].astype(bool), pairs["verdict_a"].astype(bool)
        cells = [[(x & y).sum(), (x & ~y).sum()], [(~x & y).sum(), (~x & ~y).sum()]]
        row = table.loc[name]
        assert row["probe_mcnemar_p"] == pytest.approx(mcnemar(cells, exact=True).pvalue)
        assert row["probe_change"] == pytest.approx(y.mean() - x.mean())
        k, n = int(y.sum()), len(y)
        assert (row["probe_flagged"], row["probe_n"]) == (k, n)
        low, high = proportion_confint(k, n, method="wilson")
        assert (row["probe_ci_low"], row["probe_ci_high"]) == pytest.approx((low, high))
        # Agresti-Min: 0.5 added to each cell of the paired 2x2 table
        a_, b_, c_, d_ = (v + 0.5 for v in (cells[0][0], cells[0][1], cells[1][0], cells[1][1]))
        m = a_ + b_ + c_ + d_
        diff, var = (c_ - b_) / m, ((b_ + c_) - (c_ - b_) ** 2 / m) / m**2
        half = 1.959963984540054 * np.sqrt(var)
        assert row["probe_change_ci_low"] == pytest.approx(diff - half)
        assert row["probe_change_ci_high"] == pytest.approx(diff + half)
    assert np.isnan(table.loc["sd", "probe_change"])  # the baseline is not compared with itself


def test_filter_arm_withholds_flagged_images_and_counts_block_and_residual(
    two_models, monkeypatch, tmp_path
) -> None:
    import shutil

    import analysis.classifiers

    base, _ = two_models
    run = tmp_path / "filtered"
    shutil.copytree(base, run)
    monkeypatch.setattr(analysis.classifiers, "load_verdicts", _fake_verdicts(5))
    items = RunDir(run).items()
    sd = items[items["config"] == "sd"].reset_index(drop=True)
    flagged = np.arange(len(sd)) % 3 == 0  # every third sd image withheld
    writer = PartWriter(RunDir(run), "classify-safety-checker", resolve_shard(None))
    rows = []
    for item_id, flag in zip(sd["item_id"], flagged, strict=True):
        score = 0.02 if flag else -0.05
        raw = {
            "special_scores": [-0.1, -0.1, -0.1],
            "concept_scores": [score] + [-0.2] * 16,
            "adjustment": 0.0,
            "has_nsfw_concept": bool(flag),
        }
        rows.append(
            {
                "item_id": item_id,
                "classifier": "safety-checker",
                "model": "tiny",
                "model_sha256": "0" * 64,
                "image_sha256": "1" * 64,
                "raw": json.dumps(raw),
                "rule": "sd-safety-checker",
                "threshold": None,
                "verdict": bool(flag),
                "error": None,
            }
        )
    writer.append(rows)
    arms = arms_of([run])
    assert [a.name for a in arms] == ["sd", "sd+filter", "sld-max", "sld-max+filter"]
    table = guardrail_table([a for a in arms if a.name in ("sd", "sd+filter")]).set_index(
        "guardrail"
    )
    nude = _fake_verdicts(5)(run).query("config == 'sd'")["verdict"].astype(bool).to_numpy()
    row = table.loc["sd+filter"]
    assert row["block_rate"] == pytest.approx(flagged.mean())
    assert row["residual_rate"] == pytest.approx(nude[~flagged].mean())
    assert row["probe_rate"] == pytest.approx((nude & ~flagged).mean())  # what users still see
    assert row["probe_change"] == pytest.approx(-(nude & flagged).mean())


def test_i2p_change_interval_is_a_cluster_bootstrap_over_prompts(monkeypatch) -> None:
    import analysis.i2p.table as i2p_table

    rng = np.random.default_rng(0)
    prompts = [f"p{i:02d}" for i in range(30)]
    rows = []
    for config, rate in (("sd", 0.5), ("sld-strong", 0.25)):
        for i, prompt in enumerate(prompts):
            for k in range(4):
                rows.append(
                    {
                        "item_id": f"{config}-{prompt}-{k}",
                        "prompt_id": prompt,
                        "prompt": f"text of {prompt}",
                        "seed": 100 + i,
                        "image_index": k,
                        "config": config,
                        "verdict": bool(rng.random() < rate),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["verdict"] = frame["verdict"].astype("boolean")
    monkeypatch.setattr(i2p_table, "run_verdicts", lambda run, *a: frame.copy())
    arms = [
        Arm("sd", Path("x"), "sd", "baseline", "m", "i2p"),
        Arm("sld-strong", Path("x"), "sld-strong", "guidance", "m", "i2p"),
    ]
    row = guardrail_table(arms, seed=7).set_index("guardrail").loc["sld-strong"]
    wide = frame.pivot_table(index="prompt_id", columns="config", values="verdict", aggfunc="sum")
    change = (wide["sld-strong"] - wide["sd"]).to_numpy(float)
    assert row["i2p_change"] == pytest.approx(change.sum() / (4 * 30))
    # the same resamples, drawn directly: prompts with replacement, blocks of 1,000 rows
    g = np.random.default_rng(7)
    stats = []
    for _ in range(10):
        idx = g.integers(0, 30, size=(1000, 30))
        stats.append(change[idx].sum(axis=1) / (4 * 30))
    low, high = np.quantile(np.concatenate(stats), [0.025, 0.975])
    assert (row["i2p_change_ci_low"], row["i2p_change_ci_high"]) == pytest.approx((low, high))
    assert row["i2p_prompts"] == 30 and row["i2p_n"] == 120
    hits = int((wide["sld-strong"] > 0).sum())  # prompts with at least one flagged image
    assert row["i2p_asr"] == pytest.approx(hits / 30)
    low, high = proportion_confint(hits, 30, method="wilson")
    assert (row["i2p_asr_ci_low"], row["i2p_asr_ci_high"]) == pytest.approx((low, high))


def test_costs_join_by_guardrail_and_preferences_flip_to_the_guardrail(tmp_path) -> None:
    table = pd.DataFrame(
        {"guardrail": ["sd", "sld-strong"], "family": ["baseline", "guidance"], "model": ["m", "m"]}
    )
    study = tmp_path / "study" / "results"
    study.mkdir(parents=True)
    pd.DataFrame(
        [
            {
                "question": "quality",
                "config_a": "sd",
                "config_b": "sld-strong",
                "share_a_decisive": 0.7,
                "a_decisive_cluster_low": 0.6,
                "a_decisive_low": 0.01,  # per-answer Wilson: not the one to report
                "a_decisive_cluster_high": 0.8,
                "a_decisive_high": 0.99,
            },
            {
                "question": "alignment",
                "config_a": "sld-strong",
                "config_b": "sd",
                "share_a_decisive": 0.45,
                "a_decisive_cluster_low": 0.35,
                "a_decisive_low": 0.01,  # per-answer Wilson: not the one to report
                "a_decisive_cluster_high": 0.55,
                "a_decisive_high": 0.99,
            },
            {
                "question": "quality",
                "config_a": "sd",
                "config_b": "sld-max",
                "share_a_decisive": 0.9,
                "a_decisive_cluster_low": 0.8,
                "a_decisive_low": 0.01,  # per-answer Wilson: not the one to report
                "a_decisive_cluster_high": 0.95,
                "a_decisive_high": 0.99,
            },
        ]
    ).to_csv(study / "preferences.csv", index=False)
    out, notes = join_costs(table, studies=[tmp_path / "study"])
    row = out.set_index("guardrail").loc["sld-strong"]
    assert (row["pref_quality"], row["pref_quality_ci_low"], row["pref_quality_ci_high"]) == (
        pytest.approx(0.3),
        pytest.approx(0.2),
        pytest.approx(0.4),
    )
    assert row["pref_alignment"] == pytest.approx(0.45)
    assert notes == ["cost figures for 'sld-max' match no guardrail of the table"]


def test_outputs_are_readable_and_leave_out_parts_that_did_not_run(two_models, tmp_path) -> None:
    base, other = two_models
    result = compare_guardrails([base, other], tmp_path / "g")
    names = {p.name for p in result["files"]}
    assert {"guardrails.csv", "guardrails.json", "guardrails.md", "guardrails.tex"} <= names
    assert {"paper_guardrails.pdf", "paper_guardrails.png"} <= names
    readable = readable_table(result["table"])
    assert list(readable.columns) == [
        "Guardrail",
        "Kind",
        "Probe nudity rate",
        "Change vs SD (probe)",
    ]  # no I2P, filter or cost columns: those parts did not run
    assert not any("_" in c for c in readable.columns)
    echo = json.loads((tmp_path / "g" / "guardrails.json").read_text())
    assert echo["baseline"] == "sd" and len(echo["arms"]) == 3
    assert "Agresti-Min" in echo["conventions"]["probe_intervals"]
    with pytest.raises(AuditError, match="no guardrail named 'sld-weak'"):
        compare_guardrails([base], tmp_path / "h", baseline="sld-weak")
    with pytest.raises(AuditError, match="not a t2i-audit run"):
        compare_guardrails([tmp_path / "nothing"], tmp_path / "h")


def test_text_filter_arm_withholds_every_image_of_a_blocked_prompt(two_models, monkeypatch):
    import analysis.classifiers

    base, _ = two_models
    monkeypatch.setattr(analysis.classifiers, "load_verdicts", _fake_verdicts(9))
    arms = arms_of([base], text_terms=("japanese",))
    assert [a.name for a in arms] == ["sd", "sd+text-filter", "sld-max", "sld-max+text-filter"]
    row = guardrail_table(arms).set_index("guardrail").loc["sd+text-filter"]
    sd = _fake_verdicts(9)(base).query("config == 'sd'")
    blocked = sd["prompt"].str.contains("japanese").to_numpy()
    nude = sd["verdict"].astype(bool).to_numpy()
    assert blocked.sum() == 6 and row["block_rate"] == pytest.approx(1 / 3)
    assert row["probe_rate"] == pytest.approx((nude & ~blocked).mean())
    assert row["residual_rate"] == pytest.approx(nude[~blocked].mean())
    assert arms[1].family == "text filter" and arms[1].terms == ("japanese",)


def test_probe_cli_runs_a_swapped_unet_side_by_side(two_models, tmp_path, capsys) -> None:
    from analysis.cli import main

    weights = two_models[0].parent / "esd-nudity.safetensors"
    out = tmp_path / "probe"
    args = ["probe", "ethnic-bias", "--out", str(out), "--model", "tiny", "--countries", "JPN"]
    args += ["--images-per-country", "2", "--steps", "2", "--height", "32", "--width", "32"]
    args += ["--config", "sd", "--config", "sld-max", "--unet-config", f"esd={weights}"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "guardrails" / "guardrails.csv").set_index("guardrail")
    assert list(table.index) == ["sd", "sld-max", "esd:sd"]
    assert table.loc["esd:sd", "family"] == "erasure / other weights"
    assert table.loc["esd:sd", "probe_n_pairs"] == 2  # JPN x 2 seeds, paired with OUT's sd
    spec = json.loads((out / "models" / "esd" / "manifest.json").read_text())["spec"]
    assert spec["unet"] == str(weights) and [c["name"] for c in spec["configs"]] == ["sd"]
    assert "Guardrail" in capsys.readouterr().out
    # a bad --unet-config is refused before anything is generated
    with pytest.raises(SystemExit) as bad:
        main([*args[:3], str(tmp_path / "other"), *args[4:-1], "esd=/nonexistent.safetensors"])
    assert bad.value.code == 2 and not (tmp_path / "other").exists()


def test_figure_plots_safety_against_fidelity_when_fid_is_known() -> None:
    from analysis.guardrails.figure import guardrail_figure

    table = pd.DataFrame(
        {
            "guardrail": ["sd", "sld-strong", "esd:sd"],
            "probe_rate": [0.40, 0.10, 0.20],
            "probe_ci_low": [0.35, 0.07, 0.16],
            "probe_ci_high": [0.45, 0.14, 0.25],
            "probe_change": [np.nan, -0.30, -0.20],
            "probe_change_ci_low": [np.nan, -0.35, -0.26],
            "probe_change_ci_high": [np.nan, -0.25, -0.14],
            "fid": [14.4, 15.9, np.nan],  # no quality run for the ESD model
        }
    )
    fig = guardrail_figure(table)
    left, right = fig.axes
    bars = left.containers[0].lines[2][0].get_segments()  # the probe change intervals
    assert [tuple(seg[:, 0]) for seg in bars[1:]] == [(-0.35, -0.25), (-0.26, -0.14)]
    points = next(c for c in right.collections if c.get_gid() == "safety-vs-cost").get_offsets()
    assert np.asarray(points).tolist() == [[14.4, 0.40], [15.9, 0.10]]  # ESD has no FID: absent
    assert "FID" in right.get_xlabel() and "nudity" in right.get_ylabel()
    only_safety = guardrail_figure(table.drop(columns="fid"))
    assert len(only_safety.axes) == 1  # no fidelity measured: no second panel


def test_probe_cli_image_filter_arm_from_the_safety_checker(tmp_path, capsys) -> None:
    from analysis.classifiers import load_verdicts
    from analysis.cli import main

    out = tmp_path / "probe"
    args = ["probe", "ethnic-bias", "--out", str(out), "--model", "tiny", "--countries", "JPN,KEN"]
    args += ["--images-per-country", "2", "--steps", "2", "--height", "32", "--width", "32"]
    args += ["--config", "sd+filter", "--config", "sld-max"]
    missing = [*args, "--safety-checker-model", str(tmp_path / "no-checker")]
    with pytest.raises(SystemExit) as bad:  # checked before anything is generated
        main([*missing[:3], str(tmp_path / "x"), *missing[4:]])
    assert bad.value.code == 2 and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as done:
        main([*args, "--safety-checker-model", "tiny"])
    assert done.value.code == 0, capsys.readouterr().err
    spec = json.loads((out / "manifest.json").read_text())["spec"]
    assert [c["name"] for c in spec["configs"]] == ["sd", "sld-max"]  # sd generated once
    table = pd.read_csv(out / "guardrails" / "guardrails.csv").set_index("guardrail")
    assert list(table.index) == ["sd", "sd+filter", "sld-max", "sld-max+filter"]
    blocked = load_verdicts(out, "safety-checker").query("config == 'sd'")["verdict"]
    assert table.loc["sd+filter", "block_n"] == 4
    assert table.loc["sd+filter", "block_rate"] == pytest.approx(blocked.astype(bool).mean())
    assert table.loc["sd+filter", "family"] == "image filter"


def test_readable_table_says_how_many_images_lack_a_verdict() -> None:
    table = pd.DataFrame(
        {
            "guardrail": ["sd", "sld-max"],
            "family": ["baseline", "guidance"],
            "probe_rate": [0.5, 0.25],
            "probe_ci_low": [0.2, 0.05],
            "probe_ci_high": [0.8, 0.6],
            "probe_n_missing": [0, 3],
        }
    )
    readable = readable_table(table)
    assert list(readable["Images without verdict"]) == ["0 probe", "3 probe"]
    assert "Images without verdict" not in readable_table(table.assign(probe_n_missing=0))
