"""The study's files as typed records: study.json, key.csv rows and answer rows.

One pydantic model per file kind, unknown keys forbidden, so a malformed file (bad JSON, wrong
types, a missing or misspelt field, an unknown key kind, non-UTF-8 bytes) is one error line
naming the file, the line and the field instead of a traceback or, worse, a silently dropped
check. Rater ids are stripped and NFC-normalised (a stray space must not make a second rater).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from analysis.errors import AuditError
from analysis.store.csvsafe import read_back

Kind = Literal["pair", "attention"]
Question = Literal["quality", "alignment"]
Answer = Literal["left", "none", "right"]
Text = Annotated[str, Field(min_length=1)]


class _Pair(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    a: Text
    b: Text


class StudyMeta(BaseModel):
    """study.json as `study make` writes it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    study_id: Annotated[str, Field(pattern=r"^[0-9a-f]{12}$")]
    run: str
    pair: _Pair
    seed: Annotated[int, Field(ge=0)]
    n_pairs: Annotated[int, Field(ge=0)]
    n_attention_checks: Annotated[int, Field(ge=0)]
    prompts_file: str | None
    questions: dict[str, str]
    answers: dict[str, str]
    max_side: Annotated[int, Field(ge=16)]
    conventions: list[str]
    html_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    created: str


class KeyRow(BaseModel):
    """One row of key.csv: which config was shown on which side of pair `pair_id`."""

    model_config = ConfigDict(extra="forbid")
    pair_id: Text
    kind: Kind
    prompt_id: str
    prompt: str
    seed: int
    image_index: int
    left_config: Text
    right_config: Text
    left_item_id: str
    right_item_id: str
    left_image: str
    right_image: str


class AnswerRow(BaseModel):
    """One row of an answers file exported by the study page."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    study: str | None = None
    rater: Text
    pair_id: Text
    question: Question
    answer: Answer

    @field_validator("rater")
    @classmethod
    def _normal(cls, value: str) -> str:
        if any(unicodedata.category(c).startswith("C") for c in value):
            raise ValueError("contains control characters")
        return unicodedata.normalize("NFC", value)


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    """'field 'kind' 'check' is not one of pair, attention' and the like."""
    loc = ".".join(str(p) for p in error["loc"])
    if not loc:
        return f"{error['msg']} (the file holds {type(error['input']).__name__})"
    if error["type"] == "literal_error" and loc in model.model_fields:
        allowed = ", ".join(get_args(model.model_fields[loc].annotation))
        return f"{loc} {error['input']!r} is not one of {allowed}"
    if error["type"] == "missing":
        return f"field {loc!r} is missing"
    if error["type"] == "extra_forbidden":
        return f"unknown field {loc!r}"
    return f"field {loc!r}: {error['msg'].lower()}"


def read_meta(path: Path) -> StudyMeta:
    """study.json, validated."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuditError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise AuditError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return StudyMeta.model_validate_json(text)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            raise AuditError(f"{path} is not valid JSON: {error['msg']}") from None
        if error["type"] == "model_type":
            kind = type(error["input"]).__name__
            raise AuditError(f"{path} must hold a JSON object, not a {kind}") from None
        raise AuditError(f"{path}: {_describe(error, StudyMeta)}") from None


def read_table(path: Path) -> pd.DataFrame:
    """A CSV as text cells (no NaN guessing), BOM tolerated, `'`-defused cells restored."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise AuditError(f"{path} is not a readable CSV file: {reason}") from None
    return table.apply(lambda col: col.map(read_back)) if len(table) else table


def validate_rows(table: pd.DataFrame, model: type[BaseModel], path: Path) -> pd.DataFrame:
    """Every row through `model`; the first bad one is an error naming file, line and field."""
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
    records = table.to_dict(orient="records")
    try:
        rows = adapter.validate_python(records)
    except ValidationError as exc:
        error = exc.errors()[0]
        index, *field = error["loc"]
        error = {**error, "loc": tuple(field)}
        raise AuditError(f"{path}: line {int(index) + 2}: {_describe(error, model)}") from None
    columns = [c for c in model.model_fields if c in table.columns]
    return pd.DataFrame([r.model_dump() for r in rows], columns=columns)
