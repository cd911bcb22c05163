"""Reading prompts from the command line or a file into PromptSpecs.

A prompt file is untrusted input, and a silently misread one gives numbers for prompts nobody
chose. So every row is checked and every problem is an AuditError naming the file, the line and
the field: a ragged CSV row, a repeated or blank prompt_id, a seed that is not a whole number,
text that is not UTF-8, a prompt over 10,000 characters. Files are read in bounded memory
(`analysis.store.textfile`). Nothing is dropped or coerced quietly.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analysis.errors import AuditError, one_line
from analysis.generation.runner import MAX_SEED, PromptSpec, prompt_id_for
from analysis.store.textfile import MAX_FILE_BYTES, MAX_LINE_CHARS, read_text

COLUMNS = ("prompt", "prompt_id", "group", "seed")
WHAT = "prompts file"
#: a longer prompt is refused, not silently cut: CLIP's tokenizer keeps 77 tokens anyway
MAX_PROMPT_CHARS = MAX_LINE_CHARS


def prompts_from_texts(texts: list[str], base_seed: int = 0) -> list[PromptSpec]:
    """PromptSpecs for free-text prompts sharing one base seed, so images pair across prompts.

    Repeating a --prompt is refused: it would generate the same images twice.
    """
    base_seed = _seed(base_seed, "--seed", 0)
    rows = []
    for i, text in enumerate(texts, 1):
        if not text.strip():
            raise AuditError(f"--prompt number {i} is empty; every --prompt needs some text")
        rows.append((f"--prompt number {i}", {"prompt": text}))
    return _build("the command line", rows, base_seed)


def read_prompts_file(path: str | Path, base_seed: int = 0) -> list[PromptSpec]:
    """Prompts from a .txt file (one per line, '#' comments) or a table with a `prompt` column.

    Tables (.csv, .tsv, .jsonl, .parquet) may also carry prompt_id, group and seed columns.
    """
    path = Path(path)
    base_seed = _seed(base_seed, "--seed", 0)
    if path.is_dir() or not path.exists():
        raise AuditError(f"{WHAT} {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    suffix = path.suffix.lower()
    readers = {".txt": _txt, "": _txt, ".csv": _csv, ".tsv": _csv, ".jsonl": _jsonl}
    if suffix == ".parquet":
        rows = _parquet(path)
    elif suffix in readers:
        # a .txt line is one prompt; a table's line also holds its other fields
        longest = MAX_PROMPT_CHARS if readers[suffix] is _txt else 4 * MAX_PROMPT_CHARS
        rows = readers[suffix](path, read_text(path, WHAT, max_line=longest))
    else:
        raise AuditError(
            f"cannot read prompts from {path}: use .txt, .csv, .tsv, .jsonl or .parquet"
        )
    if not rows:
        raise AuditError(f"prompts file {path} holds no prompts")
    return _build(str(path), rows, base_seed)


def _txt(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"line {n}", {"prompt": line.strip()})
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _csv(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        _check_header(path, header)
        rows = []
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise AuditError(
                    f"prompts file {path}: line {line} has {len(fields)} fields, the header has "
                    f"{len(header)}; quote fields that contain '{delimiter}'"
                )
            rows.append((f"line {line}", dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise AuditError(f"prompts file {path}: line {reader.line_num}: {exc}") from None
    return rows


def _jsonl(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditError(f"prompts file {path}: line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise AuditError(f"prompts file {path}: line {n} is not a JSON object")
        rows.append((f"line {n}", row))
    return rows


def _parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    if path.stat().st_size > MAX_FILE_BYTES:
        raise AuditError(
            f"{WHAT} {path} is {path.stat().st_size:,} bytes, over the limit of "
            f"{MAX_FILE_BYTES:,} bytes"
        )
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise AuditError(f"prompts file {path} is not a readable Parquet file: {exc}") from None
    _check_header(path, table.column_names)
    return [(f"row {i + 1}", row) for i, row in enumerate(table.to_pylist())]


def _check_header(path: Path, columns: list[str]) -> None:
    if "prompt" not in columns:
        raise AuditError(f"prompts file {path} has no 'prompt' column (columns: {columns})")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise AuditError(f"prompts file {path} repeats the column(s) {', '.join(dup)}")


def _build(source: str, rows: list[tuple[str, dict[str, Any]]], base_seed: int) -> list[PromptSpec]:
    """PromptSpecs from (where, fields) rows; every problem names the source, the row and field."""
    specs: list[PromptSpec] = []
    first: dict[str, str] = {}
    for where, row in rows:
        at = f"{source}: {where}"
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise AuditError(f"{at}: the prompt is empty")
        if len(text) > MAX_PROMPT_CHARS:
            raise AuditError(
                f"{at}: the prompt has {len(text):,} characters, over the limit of "
                f"{MAX_PROMPT_CHARS:,} (CLIP's tokenizer keeps only 77 tokens of a prompt)"
            )
        pid = _text_field(row.get("prompt_id"), at, "prompt_id")
        if pid is None:
            pid = prompt_id_for(text)
        elif not pid.strip():
            raise AuditError(f"{at}: prompt_id is blank")
        seed = _seed(row.get("seed"), at, base_seed)
        if pid in first:
            what = "repeats the prompt of" if "prompt_id" not in row else "repeats the prompt_id of"
            raise AuditError(f"{at} {what} {first[pid]} ({pid!r}); each prompt needs its own id")
        first[pid] = where
        try:
            specs.append(
                PromptSpec(
                    prompt_id=pid,
                    prompt=text,
                    group=_text_field(row.get("group"), at, "group") or "",
                    base_seed=seed,
                )
            )
        except ValidationError as exc:
            raise AuditError(f"{at}: {one_line(exc)}") from None
    return specs


def _text_field(value: Any, at: str, field: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AuditError(f"{at}: {field} must be text, got {value!r}")
    return str(value)


def _seed(value: Any, at: str, default: int) -> int:
    """A whole number in [0, 2**64 - 1]; '1.5', 'abc', True and 1e30 are errors, not truncated."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        raise AuditError(f"{at}: seed must be a whole number, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise AuditError(f"{at}: seed must be a whole number, got {value!r}")
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise AuditError(f"{at}: seed must be a whole number, got {value!r}") from None
    if not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise AuditError(f"{at}: seed {value!r} is outside 0 .. 2**64-1")
    return value
