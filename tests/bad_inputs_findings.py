"""Bad inputs of the report's Key findings and of the run notice on figures: one line each.

The findings read numbers from the run's results tables and a guardrail folder, and every figure
of a run reads the model notice from its manifest; text where a number or a notice belongs is
named, never a traceback or a figure silently drawn without the notice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from badinput import Case, _corrupt, _write

REPORT = ["report", "{run}", "--out", "{tmp}/r.html"]
FIGURES = ["figures", "{run}"]
GUARDED = [*REPORT, "--guardrails", "{tmp}"]


def _model(key: str, value: Any) -> Callable[[Path, Path], None]:
    """Set manifest["model"][key] (or manifest["model"] itself when key is empty)."""

    def setup(tmp: Path, run: Path) -> None:
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        if key:
            manifest["model"][key] = value
        else:
            manifest["model"] = value
        (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    return setup


def _cell(table: str, column: str, value: str) -> Callable[[Path, Path], None]:
    """Put `value` (text) into `column` of every row of results/`table`."""

    def setup(tmp: Path, run: Path) -> None:
        path = run / "results" / table
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        frame[column] = value
        frame.to_csv(path, index=False)

    return setup


def _guardrails(csv: str, echo: str = '{"baseline": "sd"}') -> Callable[[Path, Path], None]:
    def setup(tmp: Path, run: Path) -> None:
        _write("guardrails.csv", csv)(tmp, run)
        _write("guardrails.json", echo)(tmp, run)

    return setup


GUARD_HEAD = "guardrail,family,probe_change,probe_change_ci_low,probe_change_ci_high\n"
MANIFEST = ("manifest.json",)

CASES = [
    Case(
        "notice-figures-not-text", FIGURES, "model.notice", _model("notice", 42), changes=MANIFEST
    ),
    Case("notice-figures-blank", FIGURES, "model.notice", _model("notice", "  "), changes=MANIFEST),
    Case(
        "notice-figures-model-not-object",
        FIGURES,
        "'model' must be a JSON object",
        _model("", "toy"),
        changes=MANIFEST,
    ),
    Case(
        "notice-figures-corrupt-manifest",
        FIGURES,
        "manifest.json is not valid JSON",
        _corrupt("manifest.json", b"{not json"),
        changes=MANIFEST,
    ),
    Case(
        "notice-report-not-text", REPORT, "model.notice", _model("notice", ["x"]), changes=MANIFEST
    ),
    Case(
        "findings-paired-difference-text",
        REPORT,
        "column difference holds 'large'",
        _cell("paired_tests.csv", "difference", "large"),
        changes=("results/paired_tests.csv",),
    ),
    Case(
        "findings-rates-interval-text",
        [*REPORT[:-1], "{tmp}/r.md", "--format", "md"],
        "nudity_rates.csv: column ci_low holds 'wide'",
        _cell("nudity_rates.csv", "ci_low", "wide"),
        changes=("results/nudity_rates.csv",),
    ),
    Case(
        "findings-guardrails-no-name-column",
        GUARDED,
        "lacks the column(s) guardrail",
        _guardrails("family,probe_change\nsld,-0.1\n"),
    ),
    Case(
        "findings-guardrails-change-text",
        GUARDED,
        "column probe_change holds 'n/a'",
        _guardrails(GUARD_HEAD + "sld-max,sld,n/a,-0.2,-0.1\n"),
    ),
    Case(
        "findings-guardrails-echo-not-object",
        GUARDED,
        "guardrails.json is not a JSON object",
        _guardrails(GUARD_HEAD + "sld-max,sld,-0.1,-0.2,0.0\n", "[1]"),
    ),
]
