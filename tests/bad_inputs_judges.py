"""Bad input to `judges` (sensitivity and agreement): one line each, exit 2, no output folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from badinput import Case

JUDGES = ["judges", "{run}", "--out", "{tmp}/new"]


def _drop_nudenet(tmp: Path, run: Path) -> None:
    """The run keeps its images but loses every stored NudeNet output."""
    (run / "scores" / "nudenet.parquet").unlink(missing_ok=True)
    shutil.rmtree(run / "parts" / "classify-nudenet", ignore_errors=True)


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
        "judges-report-folder-without-output",
        ["report", "{run}", "--out", "{tmp}/r.html", "--judges", "{tmp}"],
        "has no complete judges output",
    ),
]
