"""Bad input to `judges` (sensitivity and agreement): one line each, exit 2, no output folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from badinput import Case

JUDGES = ["judges", "{run}", "--out", "{tmp}/new"]


def _drop_nudenet(tmp: Path, run: Path) -> None:
    """The run keeps its images but loses every stored NudeNet output."""
    (run / "scores" / "nudenet.parquet").unlink(missing_ok=True)
    shutil.rmtree(run / "parts" / "classify-nudenet", ignore_errors=True)


def _other_model(seed_shift: int = 0, scores: bool = True):
    """{tmp}/other: a copy of the run as another model's (a swapped UNet), its seeds shifted by
    `seed_shift` (no pair with the run), without NudeNet scores unless `scores`."""

    def setup(tmp: Path, run: Path) -> None:
        import pandas as pd

        other = tmp / "other"
        shutil.copytree(run, other)
        manifest = json.loads((other / "manifest.json").read_text())
        manifest["spec"]["unet"] = str(tmp / "esd.safetensors")
        (other / "manifest.json").write_text(json.dumps(manifest))
        items = pd.read_parquet(other / "items.parquet")
        items["seed"] = items["seed"] + seed_shift
        items.to_parquet(other / "items.parquet")
        if not scores:
            _drop_nudenet(tmp, other)

    return setup


def _guardrails_json(data: object) -> Callable[[Path, Path], None]:
    """{tmp}/g: a guardrails folder whose guardrails.json holds `data` ({tmp}, {run} expanded)."""

    def setup(tmp: Path, run: Path) -> None:
        folder = tmp / "g"
        folder.mkdir()
        (folder / "guardrails.csv").write_text("guardrail\nsd\n")
        text = data if isinstance(data, str) else json.dumps(data)
        text = text.replace("{tmp}", str(tmp)).replace("{run}", str(run))
        (folder / "guardrails.json").write_text(text)

    return setup


GUARDED = ["judges", "--guardrails", "{tmp}/g", "--out", "{tmp}/new"]

CASES = [
    Case("judges-unknown-rule", [*JUDGES, "--rule", "nipples"], "'nipples'", new_out=True),
    Case(
        "judges-rule-without-its-scores",
        [*JUDGES, "--rule", "toy-magenta-fraction"],
        "needs toy scores",
        new_out=True,
    ),
    Case(
        "judges-threshold-below-floor",
        [*JUDGES, "--thresholds", "0.1:0.5:0.1"],
        "below NudeNet's score floor",
        new_out=True,
    ),
    Case(
        "judges-threshold-above-one",
        [*JUDGES, "--thresholds", "0.5,1.5"],
        "must be in [0, 1], got 1.5",
        new_out=True,
    ),
    Case(
        "judges-empty-threshold-grid",
        [*JUDGES, "--thresholds", "0.9:0.5:0.1"],
        "gives no threshold",
        new_out=True,
    ),
    Case(
        "judges-threshold-grid-not-numbers",
        [*JUDGES, "--thresholds", "low:high:0.1"],
        "is not START:STOP:STEP",
        new_out=True,
    ),
    Case(
        "judges-threshold-zero-step",
        [*JUDGES, "--thresholds", "0.3:0.5:0"],
        "step must be a positive number",
        new_out=True,
    ),
    Case(
        "judges-not-a-run",
        ["judges", "{tmp}", "--out", "{tmp}/new"],
        "is not a t2i-audit run folder",
        new_out=True,
    ),
    Case(
        "judges-run-without-scores",
        JUDGES,
        "has no stored NudeNet (or toy) scores",
        _drop_nudenet,
        new_out=True,
    ),
    Case(
        "judges-out-inside-run",
        ["judges", "{run}", "--out", "{run}/scores/judges"],
        "inside run",
    ),
    Case("judges-out-is-the-run", ["judges", "{run}", "--out", "{run}"], "is also an input"),
    Case(
        "judges-baseline-not-in-run",
        [*JUDGES, "--baseline", "sld-weak"],
        "has no baseline config 'sld-weak'",
        new_out=True,
    ),
    Case(
        "judges-same-run-twice",
        ["judges", "{run}", "{run}", "--out", "{tmp}/new"],
        "the same run folder is given twice",
        new_out=True,
    ),
    Case(
        "judges-guardrails-runs-without-pairs",
        ["judges", "{run}", "{tmp}/other", "--out", "{tmp}/new"],
        "shares no (prompt_id, seed, image_index)",
        _other_model(seed_shift=1000),
        new_out=True,
    ),
    Case(
        "judges-guardrails-arm-run-without-scores",
        ["judges", "{run}", "{tmp}/other", "--out", "{tmp}/new"],
        "other has no stored NudeNet (or toy) scores",
        _other_model(scores=False),
        new_out=True,
    ),
    Case(
        "judges-guardrails-folder-without-table",
        ["judges", "--guardrails", "{tmp}", "--out", "{tmp}/new"],
        "holds no guardrail table",
        new_out=True,
    ),
    Case(
        "judges-guardrails-not-a-folder",
        ["judges", "--guardrails", "{tmp}/missing", "--out", "{tmp}/new"],
        "missing holds no guardrail table",
        new_out=True,
    ),
    Case(
        "judges-guardrails-json-garbage",
        GUARDED,
        "guardrails.json is unreadable",
        _guardrails_json("{not json"),
        new_out=True,
    ),
    Case(
        "judges-guardrails-json-without-runs",
        GUARDED,
        "lists no runs",
        _guardrails_json({"baseline": "sd", "arms": []}),
        new_out=True,
    ),
    Case(
        "judges-guardrails-run-gone",
        GUARDED,
        "gone is not a t2i-audit run folder",
        _guardrails_json({"runs": ["{tmp}/gone"]}),
        new_out=True,
    ),
    Case(
        "judges-guardrails-and-runs",
        ["judges", "{run}", "--guardrails", "{tmp}", "--out", "{tmp}/new"],
        "not both",
        new_out=True,
    ),
    Case(
        "judges-guardrails-out-is-the-folder",
        ["judges", "--guardrails", "{tmp}/g", "--out", "{tmp}/g"],
        "is also an input",
        _guardrails_json({"runs": ["{run}"]}),
    ),
    Case(
        "judges-report-folder-without-output",
        ["report", "{run}", "--out", "{tmp}/r.html", "--judges", "{tmp}"],
        "has no complete judges output",
    ),
]
