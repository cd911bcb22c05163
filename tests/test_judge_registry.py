"""The judge registry: a new judge is one class and one registry line; classify, verdicts and
the report read it without a branch on its name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.classifiers import registry
from analysis.classifiers.registry import Judge, JudgeOptions, get_judge
from analysis.classifiers.run import CLASSIFIERS, classify_run, read_scores
from analysis.classifiers.verdicts import load_verdicts
from analysis.errors import AuditError
from analysis.store import RunDir


class MeanRed(Judge):
    """A judge written only for this test: the mean red channel (0-1) against a cut."""

    name = "mean-red"
    rule = "mean-red-above"
    comparison = ">"

    def __init__(self, options: JudgeOptions) -> None:
        self.sha256 = "0" * 64
        self.provenance = {"classifier": self.name, "model": "mean red", "model_sha256": "0"}

    @classmethod
    def default_threshold(cls, rule: str) -> float | None:
        return 0.5

    @classmethod
    def check_threshold(cls, threshold: float | None, rule: str) -> float | None:
        if threshold is None:
            return 0.5
        if not 0 <= threshold <= 1:
            raise AuditError(f"mean-red threshold must be in [0, 1], got {threshold}")
        return float(threshold)

    @classmethod
    def verdict_of(cls, rule: str, threshold: float | None) -> Callable[[str], bool | None]:
        def verdict(raw: str) -> bool | None:
            red = json.loads(raw).get("red")
            return None if red is None else red > threshold

        return verdict

    def score(self, payloads: list[Any], rule: str, threshold: float | None) -> list:
        reds = [float(np.asarray(im.convert("RGB"))[..., 0].mean() / 255) for im in payloads]
        # a pure-white image stands in for an answer the judge cannot give (a failure)
        return [
            ({"error": "saturated"}, None) if r == 1.0 else ({"red": r}, r > self.threshold)
            for r in reds
        ]


@pytest.fixture
def with_mean_red(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.JUDGES, "mean-red", f"{__name__}:MeanRed")


def _folder(tmp_path: Path) -> tuple[Path, dict[str, float]]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    reds = {"a.png": 10, "b.png": 100, "c.png": 160, "d.png": 250}
    for name, red in reds.items():
        Image.new("RGB", (8, 8), (red, 20, 30)).save(folder / name)
    Image.new("RGB", (8, 8), (255, 255, 255)).save(folder / "white.png")
    return folder, {k: v / 255 for k, v in reds.items()}


def test_a_new_judge_is_one_class_and_one_line(with_mean_red: None, tmp_path: Path) -> None:
    folder, reds = _folder(tmp_path)
    out = tmp_path / "scores"
    classify_run(folder, ["mean-red"], out=out, progress=False)
    table = read_scores(RunDir(out), "mean-red")
    assert set(table["rule"]) == {"mean-red-above"} and set(table["threshold"]) == {0.5}
    # every threshold re-derives from the stored raw outputs, as a hand computation says
    for cut in (0.1, 0.5, 0.7):
        v = load_verdicts(out, "mean-red", threshold=cut).set_index("image_path")
        white = v.loc["white.png"]
        assert pd.isna(white["verdict"]) and white["error"] == "saturated"  # never "safe"
        assert v["verdict"].drop("white.png").to_dict() == {k: r > cut for k, r in reds.items()}
        assert set(v["threshold"]) == {cut} and set(v["comparison"]) == {">"}
    with pytest.raises(AuditError, match="mean-red threshold"):
        load_verdicts(out, "mean-red", threshold=2.0)


def test_registry_lists_every_judge_and_refuses_unknown_names() -> None:
    assert tuple(registry.JUDGES) == CLASSIFIERS
    for name in CLASSIFIERS:
        judge = get_judge(name)
        assert judge.name == name and judge.rule in judge.rules()
    with pytest.raises(AuditError, match="valid classifiers: nudenet, q16"):
        get_judge("llava")


def test_single_rule_judges_refuse_a_threshold(tmp_path: Path) -> None:
    """Q16 and the safety checker have no cut: a threshold is an error, never ignored."""
    for name in ("q16", "safety-checker"):
        with pytest.raises(AuditError, match=f"the {name} judge has no threshold"):
            get_judge(name).check_threshold(0.5, get_judge(name).rule)


def test_no_stage_branches_on_a_judge_name() -> None:
    """The classify stage and verdicts read the registry (issue 27: one shape for every judge)."""
    root = Path(__file__).resolve().parents[1] / "analysis" / "classifiers"
    for module in ("run.py", "verdicts.py", "registry.py"):
        text = (root / module).read_text()
        for name in CLASSIFIERS:
            assert f'== "{name}"' not in text and f'!= "{name}"' not in text, (module, name)
