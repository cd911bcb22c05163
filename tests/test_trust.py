"""Numbers that used to be silently wrong: each case here failed (or passed wrongly) before.

Non-finite samples, SLD settings that are really SD, sharded classification that missed images,
rankings on ties, provisional results shown as final, blurring that trusted one verdict only,
two runs with one name, interrupted runs, file modes, downloads.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_probe

from analysis.classifiers import classify_run, load_verdicts
from analysis.errors import AuditError, Interrupted
from analysis.generation.prompts import prompts_from_texts
from analysis.generation.runner import build_spec, run_generation
from analysis.guidance import SLDParams, resolve_config
from analysis.guidance.configs import CONCEPTS, concept_variant
from analysis.probes.ethnic_bias import run_probe
from analysis.probes.results import summary, write_results
from analysis.report import write_report
from analysis.report.samples import flags
from analysis.store import RunDir, Shard, atomic_write_parquet, atomic_write_text

TINY = {"model": "tiny", "steps": 3, "height": 32, "width": 32}


def _spec(configs: list, prompts: tuple[str, ...] = ("a cat",), **over):
    return build_spec(
        configs=configs, prompts=prompts_from_texts(list(prompts)), **{**TINY, **over}
    )


# --- 5. non-finite guidance -------------------------------------------------------------------


def test_non_finite_latents_are_failed_items_never_scored(tmp_path: Path) -> None:
    out = tmp_path / "run"
    spec = _spec(["sd", "sld-max:momentum_scale=1e38,name=huge"])
    summary_ = run_generation(spec, out, progress=False)
    assert (summary_["done_total"], summary_["error_total"], summary_["complete"]) == (1, 1, True)
    items = RunDir(out).items().set_index("config")
    assert items.loc["huge", "status"] == "error"
    assert "NaN or infinite" in items.loc["huge", "error"]
    assert not (out / items.loc["huge", "image_path"]).exists(), "no black PNG is written"
    classify_run(out, ["nudenet"], progress=False)
    verdicts = load_verdicts(out).set_index("config")
    assert pd.isna(verdicts.loc["huge", "verdict"])  # missing, not "not nude"
    assert verdicts.loc["sd", "verdict"] in (True, False)
    again = run_generation(spec, out, progress=False)
    assert again["generated"] == 0, "a deterministic failure is final, not retried forever"


# --- 8 / protocol: SLD configs that are plain SD ----------------------------------------------


def test_sld_that_cannot_act_is_warned_and_recorded(tmp_path: Path) -> None:
    spec = _spec(["sd", "sld-weak", "sld-strong:sld_guidance_scale=0.5,name=off"], steps=5)
    warnings = spec.warnings()
    assert any("sld-weak: warm-up 15 >= 5 steps" in w for w in warnings)
    assert any("off: s_s = 0.5 < 1" in w for w in warnings)
    run_generation(spec, tmp_path / "r", progress=False)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["warnings"] == warnings
    report = write_report([tmp_path / "r"], tmp_path / "r.html").read_text()
    assert "warm-up 15 &gt;= 5 steps" in report
    # and indeed: the images equal plain SD
    images = {p.parent.parent.name: p.read_bytes() for p in (tmp_path / "r").rglob("*.png")}
    assert images["sld-weak"] == images["sd"] == images["off"]


def test_sld_applies_at_s_s_equal_one_as_the_authors_code_does() -> None:
    at_one = SLDParams(
        warmup_steps=0, sld_guidance_scale=1.0, threshold=0.0, momentum_scale=0, momentum_beta=0
    )
    below = at_one.model_copy(update={"sld_guidance_scale": 0.999})
    assert at_one.enabled and not below.enabled
    spec = _spec(["sd", "sld-max:sld_guidance_scale=1,name=one"])
    assert not any("one" in w for w in spec.warnings())
    from analysis.generation.models import load_model
    from analysis.generation.sampler import SamplingParams, sample

    model = load_model("tiny")
    params = SamplingParams(steps=3, height=32, width=32)
    sd = sample(model, ["a cat"], [0], resolve_config("sd"), params, output_type="latent")
    one = sample(model, ["a cat"], [0], spec.configs[1], params, output_type="latent")
    assert not torch.equal(sd, one)


def test_concept_variants_are_named_and_recorded() -> None:
    diffusers = resolve_config("sld-max")
    original = resolve_config("sld-max", safety_concept="sld-original")
    assert diffusers.safety_concept == CONCEPTS["diffusers"]
    assert diffusers.safety_concept.startswith("an image showing ")
    assert original.safety_concept == CONCEPTS["sld-original"]
    assert not original.safety_concept.startswith("an image")
    assert original.name != diffusers.name  # a different concept is a different config
    assert concept_variant(original.safety_concept) == "sld-original"
    assert concept_variant("nudity") == "custom"


def test_unknown_spec_keys_fail_instead_of_running_defaults() -> None:
    with pytest.raises(AuditError, match="guidance_scal"):
        _spec(["sd"], guidance_scal=3)


def test_unet_is_identified_by_content_not_path(tmp_path: Path) -> None:
    """Retrained weights at the same path are another run (another item id), not a resume."""
    from safetensors.torch import save_file

    from analysis.generation.models import load_model

    unet = load_model("tiny").unet
    path = tmp_path / "esd.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    first = _spec(["sd"], unet=str(path))
    state = {k: v + 0.01 for k, v in unet.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    second = _spec(["sd"], unet=str(path))
    assert first.unet_sha256 != second.unet_sha256
    from analysis.generation.runner import plan_items, prepare_run

    assert set(plan_items(first)["item_id"]).isdisjoint(plan_items(second)["item_id"])
    prepare_run(first, tmp_path / "run")
    with pytest.raises(AuditError, match="unet_sha256"):
        prepare_run(second, tmp_path / "run")


# --- 4. sharded classification and completeness -----------------------------------------------


def test_sharded_probe_scores_images_finished_after_a_shard_classified(tmp_path: Path) -> None:
    out = tmp_path / "run"
    kwargs = {
        "out": out,
        "countries": ["JPN", "KEN", "BRA"],
        "images_per_country": 2,
        "configs": ["sd"],
        "steps": 2,
        "height": 32,
        "width": 32,
        "progress": False,
    }
    first = run_probe(**kwargs, shard=Shard(0, 2))
    assert first["results"].startswith("waiting")
    scored_early = set(load_verdicts(out).dropna(subset=["verdict"])["item_id"])
    # the old behaviour: shard 1's share of items finished later is never classified
    write_results(out)
    provisional = json.loads((out / "results" / "summary.json").read_text())
    assert provisional["final"] is False
    assert provisional["completeness"]["not_generated"] == 3
    second = run_probe(**kwargs, shard=Shard(1, 2))
    assert isinstance(second["results"], dict)
    verdicts = load_verdicts(out)
    assert verdicts["verdict"].notna().all(), "every image has a verdict"
    assert len(scored_early) == 2  # shard 0 scored its share of the 3 images that existed
    final = json.loads((out / "results" / "summary.json").read_text())
    assert final["final"] is True and final["completeness"]["with_verdict"] == 6
    assert final["configs"]["sd"]["n"] == 6


def test_unscored_images_make_results_provisional_everywhere(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny_probe(out, images_per_country=1, configs=["sd"])
    scores = pd.read_parquet(out / "scores" / "nudenet.parquet")
    atomic_write_parquet(scores.iloc[:1], out / "scores" / "nudenet.parquet")
    for part in (out / "parts" / "classify-nudenet").glob("*.jsonl"):
        part.write_text(part.read_text().splitlines(keepends=True)[0])
    write_results(out)
    summ = json.loads((out / "results" / "summary.json").read_text())
    assert summ["final"] is False and summ["completeness"]["not_scored"] == 1
    html = write_report([out], tmp_path / "r.html").read_text()
    assert "PROVISIONAL" in html and "1 not scored by nudenet" in html
    from analysis.figures.probe import _provisional_mark

    assert "PROVISIONAL: 1 of 2 images" in _provisional_mark(out)
    # classify completes it, and then the numbers are final
    classify_run(out, ["nudenet"], progress=False)
    write_results(out)
    assert json.loads((out / "results" / "summary.json").read_text())["final"] is True


# --- the report claims only what the data show ------------------------------------------------


def _rates(rates: dict[str, float], n: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    from analysis.stats import wilson_interval

    rows = []
    for iso3, rate in rates.items():
        k = round(rate * n)
        low, high = wilson_interval(k, n)
        rows.append(
            {"iso3": iso3, "country": iso3, "config": "sd", "n": n, "nude": k, "rate": k / n,
             "ci_low": low, "ci_high": high, "n_missing": 0}
        )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame({"rule": ["exposed-genitalia"]})


def test_no_country_is_named_on_a_tie() -> None:
    rates, verdicts = _rates({"JPN": 0.0, "KEN": 0.0, "BRA": 0.0})
    entry = summary(rates, verdicts)["configs"]["sd"]
    assert entry["most_affected"] is None and entry["least_affected"] is None
    assert entry["most_affected_tied"] == {"rate": 0.0, "countries": 3}
    assert entry["heterogeneity"]["p_value"] is None  # no variation: no test, not p = 1
    assert "no variation" in entry["heterogeneity"]["note"]
    rates, verdicts = _rates({"JPN": 0.5, "KEN": 0.2, "BRA": 0.2})
    entry = summary(rates, verdicts)["configs"]["sd"]
    assert entry["most_affected"]["iso3"] == "JPN"
    assert entry["least_affected"] is None and entry["least_affected_tied"]["countries"] == 2
    from scipy.stats import chi2_contingency

    table = [[5, 5], [2, 8], [2, 8]]
    assert entry["heterogeneity"]["p_value"] == pytest.approx(
        chi2_contingency(table, correction=False).pvalue
    )


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "run"
    tiny_probe(out)
    return out


def test_blur_follows_every_stored_verdict_and_unclassified_images(
    probe_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(probe_run, run)
    items = RunDir(run).items()
    ids = items.loc[items["image_index"] == 0, "item_id"].tolist()  # the ones the report shows
    # NudeNet: image 0 has an exposed breast (I2P rule, not the probe's genitalia rule)
    scores = pd.read_parquet(run / "scores" / "nudenet.parquet")
    breast = [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.8, "box": [0, 0, 4, 4]}]
    scores.loc[scores["item_id"] == ids[0], "raw"] = json.dumps(breast)
    scores = scores[scores["item_id"] != ids[2]]  # image 2 was never classified
    atomic_write_parquet(scores, run / "scores" / "nudenet.parquet")
    shutil.rmtree(run / "parts" / "classify-nudenet")
    # Q16 flags image 1
    q16 = scores.copy()
    q16["classifier"], q16["rule"] = "q16", "q16-argmax"
    q16["raw"] = json.dumps({"p_safe": 0.9, "p_inappropriate": 0.1})
    q16.loc[q16["item_id"] == ids[1], "raw"] = json.dumps({"p_safe": 0.2, "p_inappropriate": 0.8})
    atomic_write_parquet(q16, run / "scores" / "q16.parquet")
    why = flags(RunDir(run))
    assert why[ids[0]] == ["nudenet: i2p-exposed", "nudenet: i2p-authors",
                           "nudenet: nsfw-erasure-benchmark"]  # fmt: skip
    assert why[ids[1]] == ["q16: q16-argmax"]
    assert why[ids[2]] == ["not classified"]
    assert set(why) == {ids[0], ids[1], ids[2]}
    html = write_report([run], tmp_path / "r.html").read_text()
    assert "blurred: q16" in html and "blurred: not classified" in html
    assert "blurred: nudenet: i2p-exposed" in html


def test_two_runs_with_one_folder_name_stay_apart(probe_run: Path, tmp_path: Path) -> None:
    import shutil

    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    shutil.copytree(probe_run, a)
    shutil.copytree(probe_run, b)
    html = write_report([a, b], tmp_path / "r.html").read_text()
    div_ids = re.findall(r'<div id="(map-[^"]+)"', html)
    assert len(div_ids) == 2 and len(set(div_ids)) == 2
    assert html.count("Plotly.newPlot") == 2
    with pytest.raises(AuditError, match="twice"):
        write_report([a, a], tmp_path / "r2.html")


def test_methods_list_only_what_ran(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    run_generation(_spec(["sd"]), out, progress=False)
    html = write_report([out], tmp_path / "r.html").read_text()
    for absent in ("Safe Latent Diffusion.", "Paired test.", "Dataset side.", "I2P.", "McNemar"):
        assert absent not in html, absent
    assert "Generation." in html


# --- 10. interrupts, file modes, offline ------------------------------------------------------


def test_ctrl_c_says_what_was_kept_and_resume_finishes(tmp_path: Path, monkeypatch) -> None:
    from analysis.generation import runner

    calls = {"n": 0}
    real = runner._sample_batch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_sample_batch", interrupted)
    spec = _spec(["sd"], prompts=("a", "b", "c", "d"), batch_size=2)
    with pytest.raises(Interrupted, match=r"2 of 4 images .* kept .* re-run the same command"):
        run_generation(spec, tmp_path / "r", progress=False)
    monkeypatch.setattr(runner, "_sample_batch", real)
    assert run_generation(spec, tmp_path / "r", progress=False)["generated"] == 2


def test_files_are_written_with_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o002)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o664


def test_offline_unless_the_user_opts_in(monkeypatch) -> None:
    from analysis.hub import downloads_allowed

    monkeypatch.delenv("T2I_AUDIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not downloads_allowed()
    monkeypatch.setenv("T2I_AUDIT_ALLOW_DOWNLOAD", "1")
    assert downloads_allowed()
    monkeypatch.setenv("T2I_AUDIT_ALLOW_DOWNLOAD", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert downloads_allowed()


def test_missing_hub_model_fails_fast_and_says_how(monkeypatch) -> None:
    import time

    from analysis.generation.models import load_model

    monkeypatch.delenv("T2I_AUDIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    with pytest.raises(AuditError, match="T2I_AUDIT_ALLOW_DOWNLOAD=1"):
        load_model("nobody/no-such-model")
    assert time.perf_counter() - started < 5, "no retries against the hub"
