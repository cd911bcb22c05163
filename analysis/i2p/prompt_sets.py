"""Prompt sets beyond I2P: any table of prompts a user brings, mapped by column name.

The adversarial sets the field uses (P4D, Ring-A-Bell, MMA-Diffusion, UnlearnDiffAtk's prompts)
ship as CSV files with their own column names. `--columns prompt=adv_prompt,seed=evaluation_seed`
maps them onto the I2P schema the benchmark machinery reads, so generation, classification, the
report and the attack success rate run on them unchanged. Columns I2P has and the set lacks stay
empty (NaN): no dataset-side percentage or toxicity is invented.
"""

from __future__ import annotations

import csv as _csv
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AuditError
from analysis.i2p.loader import PERCENT_COLUMNS, I2PDataset

#: what can be mapped -> the I2P column it fills; only `prompt` is required
FIELDS = {
    "prompt": "prompt",
    "seed": "sd_seed",
    "guidance": "sd_guidance_scale",
    "category": "categories",
    "id": "case_number",
}
DEFAULT_GUIDANCE = 7.5


def parse_columns(text: str | None) -> dict[str, str]:
    """'prompt=adv_prompt,seed=evaluation_seed' -> {'prompt': 'adv_prompt', 'seed': ...}."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        field, sep, column = (x.strip() for x in part.partition("="))
        if not sep or not column:
            raise AuditError(f"--columns {part.strip()!r}: expected FIELD=COLUMN, e.g. prompt=text")
        if field not in FIELDS:
            raise AuditError(f"--columns: unknown field {field!r}; map any of {', '.join(FIELDS)}")
        if field in mapping:
            raise AuditError(
                f"--columns: field {field!r} is mapped twice ({mapping[field]!r} and {column!r}); "
                "map each field once"
            )
        mapping[field] = column
    mapping.setdefault("prompt", "prompt")
    return mapping


def load_prompt_set(
    path: str | Path, columns: dict[str, str], *, seed: int = 0, name: str | None = None
) -> I2PDataset:
    """A user's prompt table in I2P's schema. Without a seed column, prompt i gets seed + i;
    without a category column, every prompt is in one group named after the file.

    Every way the mapping could be read two ways is refused, naming the file and the column or
    line: a header naming a mapped column twice (pandas would rename one `prompt.1` and keep the
    other) and a row without prompt text (dropping it would silently shrink the set and shift
    the seeds of the rows after it).
    """
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"prompt set {path} does not exist; pass a CSV or Parquet file")
    csv = path.suffix != ".parquet"
    try:
        raw = pd.read_csv(path) if csv else pd.read_parquet(path)
        header, lines = _csv_layout(path) if csv else (list(map(str, raw.columns)), None)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, _csv.Error) as exc:
        raise AuditError(f"prompt set {path} is not a readable table: {exc}") from None
    where = _places(lines, len(raw))
    for column in dict.fromkeys(columns.values()):
        if header.count(column) > 1:
            raise AuditError(
                f"prompt set {path}: column {column!r} (mapped by --columns) appears "
                f"{header.count(column)} times in its header; rename all but one"
            )
    missing = [c for c in columns.values() if c not in header]  # not pandas' 'prompt.1'
    if missing:
        raise AuditError(
            f"prompt set {path} has no column {missing[0]!r} (mapped by --columns); its columns: "
            f"{', '.join(header)}"
        )
    if raw.empty:
        raise AuditError(f"prompt set {path} has no rows under its header")
    group = name or path.stem
    text = raw[columns["prompt"]]
    bad = text.isna() | (text.astype(str).str.strip() == "")
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise AuditError(
            f"prompt set {path}: {where(row)} has no prompt text in column "
            f"{columns['prompt']!r} ({int(bad.sum())} such row(s)); fill or delete them"
        )
    frame = pd.DataFrame({"prompt": raw[columns["prompt"]].astype(str).str.strip()})
    frame["categories"] = raw[columns["category"]].astype(str) if "category" in columns else group
    frame["hard"] = False
    for column in (*PERCENT_COLUMNS, "prompt_toxicity"):
        frame[column] = np.nan
    frame["sd_seed"] = _integers(raw, columns.get("seed"), seed, path, where)
    frame["sd_guidance_scale"] = (
        _guidance(raw, columns["guidance"], path, where)
        if "guidance" in columns
        else DEFAULT_GUIDANCE
    )
    frame["sd_image_width"] = frame["sd_image_height"] = 512
    if "id" in columns:
        ids = raw[columns["id"]].astype(str)
        if ids.duplicated().any():
            twice = ids[ids.duplicated()].iloc[0]
            raise AuditError(f"prompt set {path}: id column {columns['id']!r} repeats {twice!r}")
    else:
        ids = pd.Series([str(i) for i in range(len(raw))])
    frame.insert(0, "prompt_id", ids.to_numpy())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = f"prompt-set:{path} ({', '.join(f'{k}={v}' for k, v in columns.items())})"
    return I2PDataset(frame=frame, source=source, path=path, sha256=digest)


def _csv_layout(path: Path) -> tuple[list[str], list[int]]:
    """A CSV's header as written (duplicates kept) and the line each data row starts on.

    Read with the csv module, which splits as pandas' reader does (quoted fields may span
    lines; blank lines are skipped), so row i of the frame starts on lines[i]; where the two
    disagree on the row count, messages fall back to row numbers (`_places`).
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:  # pandas drops a BOM too
        reader = _csv.reader(handle)
        header: list[str] | None = None
        lines: list[int] = []
        end = 0
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record:
                continue  # a blank line: pandas skips it too
            if header is None:
                header = record
            else:
                lines.append(start)
    return header or [], lines


def _places(lines: list[int] | None, n: int) -> Callable[[int], str]:
    """Row i (0-based) as a reader finds it: 'line N' in a CSV, 'row N' in a Parquet file."""
    if lines is None or len(lines) != n:
        return lambda i: f"row {i + 1}"
    return lambda i: f"row {i + 1} (line {lines[i]})"


def _guidance(raw: pd.DataFrame, column: str, path: Path, where: Callable[[int], str]) -> pd.Series:
    """A guidance column as floats; a blank, non-numeric, non-finite or negative cell is named."""
    values = pd.to_numeric(raw[column], errors="coerce").astype(float)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise AuditError(
            f"prompt set {path}: guidance column {column!r} {where(row)} is not a finite "
            f"non-negative number ({str(raw[column].iloc[row])!r})"
        )
    return values


def _integers(
    raw: pd.DataFrame, column: str | None, seed: int, path: Path, where: Callable[[int], str]
) -> pd.Series:
    if column is None:
        return pd.Series(seed + np.arange(len(raw)), dtype="int64")
    values = pd.to_numeric(raw[column], errors="coerce")
    bad = values.isna() | (values % 1 != 0) | (values < 0) | (values >= 2.0**63)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise AuditError(
            f"prompt set {path}: seed column {column!r} {where(row)} is not a non-negative "
            f"integer ({str(raw[column].iloc[row])!r})"
        )
    return values.astype("int64")
