"""Bad inputs of `study make`, `study analyse` and `report --format md`: one named line each."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from badinput import Case, _write

MAKE = ["study", "make", "{run}", "--pair", "sd:sld-max", "--out", "{tmp}/new"]
ANALYSE = ["study", "analyse", "{tmp}/study/r1.csv"]


def _study(edit: Callable[[Path], None] | None = None, rater: str = "r1") -> Callable:
    """Make a study of the finished run in {tmp}/study, one rater's answers, then `edit` it."""

    def setup(tmp: Path, run: Path) -> None:
        from analysis.study import make_study

        folder = tmp / "study"
        meta = make_study(run, "sd:sld-max", folder, attention_checks=1)
        key = pd.read_csv(folder / "key.csv", dtype=str, keep_default_na=False)
        rows = [
            {
                "study": meta["study_id"],
                "rater": rater,
                "pair_id": pid,
                "question": q,
                "answer": "none" if kind == "attention" else "left",
            }
            for pid, kind in zip(key["pair_id"], key["kind"], strict=True)
            for q in ("quality", "alignment")
        ]
        pd.DataFrame(rows).to_csv(folder / "r1.csv", index=False)
        if edit is not None:
            edit(folder)

    return setup


def _meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Change study.json in place (`change` mutates the dict)."""

    def edit(folder: Path) -> None:
        meta = json.loads((folder / "study.json").read_text())
        change(meta)
        (folder / "study.json").write_text(json.dumps(meta))

    return edit


def _raw(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _answers(**cols: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        table = pd.read_csv(folder / "r1.csv", dtype=str)
        for col, value in cols.items():
            table[col] = value
        table.to_csv(folder / "r1.csv", index=False)

    return edit


def _unknown_kind(folder: Path) -> None:
    key = pd.read_csv(folder / "key.csv", dtype=str, keep_default_na=False)
    key.loc[key["kind"] == "attention", "kind"] = "check"
    key.to_csv(folder / "key.csv", index=False)


def _two_raters(folder: Path) -> None:
    table = pd.read_csv(folder / "r1.csv", dtype=str)
    table.assign(rater="R1").to_csv(folder / "r2.csv", index=False)


def _bomb(tmp: Path, run: Path) -> None:
    """The first SD image becomes a PNG whose header declares 50000 x 50000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    target = sorted((run / "images" / "sd").rglob("*.png"))[0]
    target.write_bytes(png + chunk(b"IEND", b""))


CASES = [
    Case("study-make-bomb-image", MAKE, "decompression bomb", _bomb, new_out=True),
    Case(
        "study-make-prompts-not-utf8",
        [*MAKE, "--prompts", "{tmp}/p.txt"],
        "p.txt cannot be read as UTF-8",
        _write("p.txt", b"\xff\xfe japanese body\n"),
        new_out=True,
    ),
    Case(
        "study-json-not-json",
        ANALYSE,
        "study.json is not valid JSON",
        _study(_raw("study.json", b'{"pair": ')),
    ),
    Case(
        "study-json-not-utf8",
        ANALYSE,
        "study.json is not UTF-8 text",
        _study(_raw("study.json", b'{"run": "\xff"}')),
    ),
    Case(
        "study-json-top-level-list",
        ANALYSE,
        "study.json must hold a JSON object, not a list",
        _study(_raw("study.json", b"[]")),
    ),
    Case(
        "study-json-seed-wrong-type",
        ANALYSE,
        "study.json: field 'seed'",
        _study(_meta(lambda m: m.update(seed="0"))),
    ),
    Case(
        "study-json-missing-pair",
        ANALYSE,
        "study.json: field 'pair' is missing",
        _study(_meta(lambda m: m.pop("pair"))),
    ),
    Case(
        "study-json-unknown-field",
        ANALYSE,
        "study.json: unknown field 'notes'",
        _study(_meta(lambda m: m.update(notes="x"))),
    ),
    Case(
        "study-json-pair-not-in-key",
        ANALYSE,
        "pair a='sd', b='sld-strong' does not match",
        _study(_meta(lambda m: m.update(pair={"a": "sd", "b": "sld-strong"}))),
    ),
    Case(
        "study-key-unknown-kind",
        ANALYSE,
        "kind 'check' is not one of pair, attention",
        _study(_unknown_kind),
    ),
    Case(
        "study-answers-unknown-column",
        ANALYSE,
        "r1.csv: line 2: unknown field 'comment'",
        _study(_answers(comment="fine")),
    ),
    Case(
        "study-answers-not-utf8",
        ANALYSE,
        "r1.csv is not a readable CSV file",
        _study(_raw("r1.csv", b"study,rater\n\xff\xfe,x\n")),
    ),
    Case(
        "study-answers-case-only-raters",
        ["study", "analyse", "{tmp}/study/r1.csv", "{tmp}/study/r2.csv"],
        "rater ids 'R1' and 'r1' differ only in case",
        _study(_two_raters),
    ),
    Case(
        "study-report-md-out-overwrites-run-file",
        ["report", "{run}", "--out", "{run}/results/summary.json", "--format", "md"],
        "summary.json is an existing file of the input",
    ),
    Case(
        "study-report-md-files-folder-is-a-file",
        ["report", "{run}", "--out", "{tmp}/r.md", "--format", "md"],
        "r_files (for the figure files) exists and is not a folder",
        _write("r_files", "x"),
    ),
    Case(
        "study-report-md-out-under-a-file",
        ["report", "{run}", "--out", "{tmp}/p.txt/r.md", "--format", "md"],
        "p.txt is a file, not a folder",
        _write("p.txt", "x"),
    ),
]
