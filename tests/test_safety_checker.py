"""SD's safety checker: our stored scores and verdicts are diffusers' own, and the filter stats."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from analysis.classifiers.safety_checker import (
    SafetyCheckerClassifier,
    block_stats,
    filter_verdicts,
    tiny_checker,
    verdict_from_raw,
)
from analysis.errors import AuditError
from analysis.stats.rates import wilson_interval


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 40, 3), dtype=np.uint8)) for i in range(n)
    ]


def _oracle(checker: Any, clip_input: torch.Tensor) -> tuple[list[dict], list[bool]]:
    """diffusers' forward on the same input: its verdicts, and its per-image `result` dicts
    (a local of forward that diffusers never returns), read as forward returns."""
    target = StableDiffusionSafetyChecker.forward.__wrapped__.__code__
    seen: dict[str, Any] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is target:
            seen["result"] = frame.f_locals["result"]

    images = np.zeros((clip_input.shape[0], 4, 4, 3))
    sys.setprofile(profile)
    try:
        _, flags = checker(clip_input=clip_input, images=images)
    finally:
        sys.setprofile(None)
    return seen["result"], [bool(f) for f in flags]


def _assert_same(ours: list[dict], oracle: list[dict], flags: list[bool]) -> None:
    for mine, theirs, flag in zip(ours, oracle, flags, strict=True):
        assert mine["special_scores"] == [float(theirs["special_scores"][i]) for i in range(3)]
        assert mine["concept_scores"] == [float(theirs["concept_scores"][i]) for i in range(17)]
        assert [i for i, s in enumerate(mine["concept_scores"]) if s > 0] == theirs["bad_concepts"]
        assert mine["has_nsfw_concept"] is flag
        stored = json.loads(json.dumps(mine))  # as the `raw` column keeps it
        assert stored == mine and verdict_from_raw(json.dumps(mine)) is flag


@pytest.fixture
def classifier() -> SafetyCheckerClassifier:
    return SafetyCheckerClassifier(checker=tiny_checker(seed=3))


def test_scores_and_verdicts_equal_diffusers_forward(classifier: SafetyCheckerClassifier) -> None:
    images = _images(12)
    checker = classifier.checker
    clip_input = classifier.pixel_values(images)
    with torch.no_grad():  # thresholds at the images' medians: both verdicts, both adjustments
        embeds = nn.functional.normalize(
            checker.visual_projection(checker.vision_model(clip_input)[1])
        )
        concept = embeds @ nn.functional.normalize(checker.concept_embeds).T
        special = embeds @ nn.functional.normalize(checker.special_care_embeds).T
        checker.concept_embeds_weights.copy_(concept.max(dim=0).values + 1.0)
        checker.concept_embeds_weights[[2, 9]] = concept[:, [2, 9]].median(dim=0).values + 0.01
        checker.special_care_embeds_weights.fill_(2.0)
        checker.special_care_embeds_weights[1] = special[:, 1].median()
    ours = classifier.safety_checker_scores(images)
    oracle, flags = _oracle(checker, clip_input)
    _assert_same(ours, oracle, flags)
    # the random checker must exercise both verdicts and the special-care branch
    assert 0 < sum(flags) < len(flags)
    assert {r["adjustment"] for r in ours} == {0.0, 0.01}


def test_special_care_adjustment_flips_a_verdict() -> None:
    checker = tiny_checker(seed=5)
    clf = SafetyCheckerClassifier(checker=checker)
    images = _images(2, seed=9)
    clip_input = clf.pixel_values(images)
    with torch.no_grad():
        embed = checker.visual_projection(checker.vision_model(clip_input)[1])[0]
        checker.concept_embeds_weights.fill_(2.0)  # nothing flagged ...
        checker.special_care_embeds_weights.fill_(2.0)
        checker.concept_embeds[4] = embed  # ... except concept 4, 0.005 short of its threshold
        checker.concept_embeds_weights[4] = 1.005
        checker.special_care_embeds[1] = embed
    before = clf.scores_for_input(clip_input)
    oracle_before, flags_before = _oracle(checker, clip_input)
    with torch.no_grad():
        checker.special_care_embeds_weights[1] = 0.5  # special concept 1 fires: adjustment 0.01
    after = clf.scores_for_input(clip_input)
    oracle_after, flags_after = _oracle(checker, clip_input)
    _assert_same(before, oracle_before, flags_before)
    _assert_same(after, oracle_after, flags_after)
    assert before[0]["concept_scores"][4] == pytest.approx(-0.005, abs=1e-6)
    assert after[0]["concept_scores"][4] == pytest.approx(0.005, abs=1e-6)
    assert (flags_before[0], flags_after[0]) == (False, True)
    assert after[0]["adjustment"] == 0.01 and after[0]["special_scores"][1] > 0
    assert flags_after[1] is False  # the other image is untouched


def test_a_saved_checker_folder_loads_offline_and_scores_the_same(tmp_path: Path) -> None:
    checker = tiny_checker(seed=3)
    checker.save_pretrained(tmp_path / "safety_checker")
    loaded = SafetyCheckerClassifier(str(tmp_path / "safety_checker"))
    given = SafetyCheckerClassifier(checker=checker)
    images = _images(3)
    assert loaded.safety_checker_scores(images) == given.safety_checker_scores(images)
    assert loaded.provenance["checker"]["id"] == str(tmp_path / "safety_checker")
    assert loaded.sha256 != SafetyCheckerClassifier(checker=tiny_checker(seed=4)).sha256


def test_missing_weights_name_what_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("T2I_AUDIT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AuditError, match="hf download CompVis/stable-diffusion-safety-checker"):
        SafetyCheckerClassifier("nobody-t2i/no-such-safety-checker")
    with pytest.raises(AuditError, match="does not exist"):
        SafetyCheckerClassifier("/no/such/folder")


def test_filter_verdicts_rederive_and_refuse_corrupt_rows() -> None:
    raw = {"special_scores": [0.0] * 3, "concept_scores": [-0.1] * 17, "adjustment": 0.0}
    hit = {**raw, "concept_scores": [-0.1] * 16 + [0.001]}
    table = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "raw": [json.dumps(raw), json.dumps(hit), None],
            "verdict": [False, True, None],
            "error": [None, None, "unreadable"],
        }
    )
    flags = filter_verdicts(table)
    assert flags.dtype == "boolean" and list(flags.index) == ["a", "b", "c"]
    assert not flags["a"] and flags["b"] and flags.isna().tolist() == [False, False, True]
    table.loc[1, "verdict"] = False
    with pytest.raises(AuditError, match="item b"):
        filter_verdicts(table)


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 7), (1, 7), (2, 9), (9, 9), (37, 250)])
def test_wilson_interval_matches_the_formula_and_statsmodels(k: int, n: int) -> None:
    ours = wilson_interval(k, n)
    assert ours == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)
    assert ours == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)


def test_block_stats_by_hand() -> None:
    ids = [f"i{j}" for j in range(10)]
    flags = pd.Series([1, 1, 0, 0, 0, 0, 0, 0, 0, None], index=ids).astype("boolean")
    nudity = pd.Series([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], index=ids).astype(bool)
    reversed_ = nudity.iloc[::-1]  # aligned by item id, not by position
    out = block_stats(flags, reversed_).set_index("measure")
    # blocked: i0, i1 of the 9 with a verdict; passing: i2..i8 (7), nude among them: i2
    expected = {"blocked": (2, 9, 1), "residual_nudity": (1, 7, 1), "nudity_unfiltered": (2, 9, 1)}
    for measure, (k, n, missing) in expected.items():
        row = out.loc[measure]
        assert (row["k"], row["n"], row["n_missing"]) == (k, n, missing)
        assert row["rate"] == pytest.approx(k / n)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(_wilson_by_hand(k, n))
    with pytest.raises(AuditError, match="no nudity verdict"):
        block_stats(flags, nudity.drop("i3"))
