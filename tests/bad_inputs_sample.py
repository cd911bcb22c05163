"""Bad inputs of `judges sample` and `judges score`: one named line each, nothing written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from badinput import Case, _write

SAMPLE = ["judges", "sample", "{run}", "--out", "{tmp}/new"]
SCORE = ["judges", "score", "{tmp}/s", "{tmp}/l.csv"]


def _sample(rows: Callable[[str, list[str]], list[list[str]]] | None = None) -> Callable:
    """A sample of the finished run in {tmp}/s and, from `rows(sample, ids)`, {tmp}/l.csv."""

    def setup(tmp: Path, run: Path) -> None:
        from analysis.judges.sample import make_sample

        meta = make_sample(run, 4, tmp / "s", seed=0)
        ids = pd.read_csv(tmp / "s" / "sample.csv", dtype=str)["sample_id"].tolist()
        if rows is not None:
            table = pd.DataFrame(
                rows(meta["sample"], ids), columns=["sample", "sample_id", "label", "rater"]
            )
            table.to_csv(tmp / "l.csv", index=False)

    return setup


def _other_sample(tmp: Path, run: Path) -> None:
    """Labels exported from a second sample's page (another seed) beside the first sample."""
    from analysis.judges.sample import make_sample

    _sample()(tmp, run)
    other = make_sample(run, 4, tmp / "t", seed=1)
    ids = pd.read_csv(tmp / "t" / "sample.csv", dtype=str)["sample_id"]
    rows = [[other["sample"], i, "no", "ann"] for i in ids]
    pd.DataFrame(rows, columns=["sample", "sample_id", "label", "rater"]).to_csv(
        tmp / "l.csv", index=False
    )


def _edited_key(tmp: Path, run: Path) -> None:
    _sample(lambda s, ids: [[s, i, "no", "ann"] for i in ids])(tmp, run)
    key = pd.read_csv(tmp / "s" / "sample.csv", dtype=str)
    key.loc[0, "weight"] = "100.0"
    key.to_csv(tmp / "s" / "sample.csv", index=False)


def _no_scores(tmp: Path, run: Path) -> None:
    shutil.rmtree(run / "scores")
    for folder in (run / "parts").glob("classify-*"):
        shutil.rmtree(folder)


def _held(tmp: Path, run: Path) -> None:
    (tmp / "new").mkdir()
    (tmp / "new" / "sample.csv").write_text("sample_id\n")


CASES = [
    Case("sample-n-zero", [*SAMPLE, "--n", "0"], "--n must be at least 1", new_out=True),
    Case(
        "sample-n-larger-than-run",
        [*SAMPLE, "--n", "999"],
        "--n 999 is more than the 4 images",
        new_out=True,
    ),
    Case("sample-n-below-strata", [*SAMPLE, "--n", "1"], "strata", new_out=True),
    Case(
        "sample-run-without-scores",
        [*SAMPLE, "--n", "4"],
        "has no classifier scores",
        _no_scores,
        new_out=True,
    ),
    Case(
        "sample-judge-without-scores",
        [*SAMPLE, "--n", "4", "--judge", "q16"],
        "--judge 'q16' has no scores",
        new_out=True,
    ),
    Case(
        "sample-out-inside-run",
        ["judges", "sample", "{run}", "--n", "4", "--out", "{run}/images/sample"],
        "inside run",
    ),
    Case(
        "sample-out-is-the-run",
        ["judges", "sample", "{run}", "--n", "4", "--out", "{run}"],
        "is also an input of this command",
    ),
    Case("sample-out-holds-a-sample", [*SAMPLE, "--n", "4"], "already holds a sample", _held),
    Case(
        "sample-not-a-run",
        ["judges", "sample", "{tmp}", "--n", "4", "--out", "{tmp}/new"],
        "not a t2i-audit run",
        new_out=True,
    ),
    Case(
        "sample-empty-question",
        [*SAMPLE, "--n", "4", "--question", " "],
        "--question is empty",
        new_out=True,
    ),
    Case("sample-score-labels-of-another-sample", SCORE, "l.csv labels sample", _other_sample),
    Case(
        "sample-score-unknown-sample-id",
        SCORE,
        "sample id 's999' is not in this sample's key",
        _sample(lambda s, ids: [[s, "s999", "yes", "ann"]]),
    ),
    Case(
        "sample-score-bad-label",
        SCORE,
        "label 'maybe' is not one of yes, no, unsure",
        _sample(lambda s, ids: [[s, ids[0], "maybe", "ann"]]),
    ),
    Case(
        "sample-score-empty-labels-file",
        SCORE,
        "l.csv is not a readable CSV file",
        lambda tmp, run: (_sample()(tmp, run), _write("l.csv", b"")(tmp, run)),
    ),
    Case(
        "sample-score-header-only",
        SCORE,
        "l.csv holds no labels",
        lambda tmp, run: (
            _sample()(tmp, run),
            _write("l.csv", "sample,sample_id,label,rater\n")(tmp, run),
        ),
    ),
    Case(
        "sample-score-no-sample-column",
        SCORE,
        "no column 'sample'",
        lambda tmp, run: (
            _sample()(tmp, run),
            _write("l.csv", "sample_id,label,rater\ns001,yes,a\n")(tmp, run),
        ),
    ),
    Case(
        "sample-score-rater-conflict",
        SCORE,
        "rater 'ann' gave two different labels",
        _sample(lambda s, ids: [[s, ids[0], "yes", "ann"], [s, ids[0], "no", "ann"]]),
    ),
    Case("sample-score-edited-key", SCORE, "the key was edited", _edited_key),
    Case(
        "sample-score-not-a-sample",
        ["judges", "score", "{tmp}", "{tmp}/l.csv"],
        "is not a sample folder",
        _write("l.csv", "sample,sample_id,label,rater\n"),
    ),
    Case(
        "sample-score-labels-missing",
        ["judges", "score", "{tmp}/s", "{tmp}/none.csv"],
        "labels file",
        _sample(),
    ),
]
