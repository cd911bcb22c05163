"""Property tests of the readers users feed by hand: prompt files, guidance configs, the spec.

For any input they either return exactly what was written or raise AuditError (one named
line at the CLI); never another exception, never a silently changed value.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from analysis.errors import AuditError  # noqa: E402
from analysis.generation.prompts import read_prompts_file  # noqa: E402
from analysis.generation.runner import MAX_SEED, GenerationSpec, build_spec  # noqa: E402
from analysis.guidance import GuidanceConfig, resolve_config  # noqa: E402
from analysis.store.names import SAFE_NAME  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
).filter(lambda t: t.strip() != "")
ids = st.from_regex(SAFE_NAME, fullmatch=True)
seeds = st.integers(min_value=0, max_value=MAX_SEED)
rows = st.lists(st.tuples(ids, texts, st.text(max_size=8), seeds), min_size=1, max_size=6).filter(
    lambda r: len({i for i, *_ in r}) == len(r)
)


def _file(suffix: str, data: bytes) -> Path:
    folder = Path(tempfile.mkdtemp())
    path = folder / f"prompts{suffix}"
    path.write_bytes(data)
    return path


@SETTINGS
@given(rows)
def test_csv_round_trip_is_exact(values: list[tuple[str, str, str, int]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["prompt_id", "prompt", "group", "seed"])
    writer.writerows(values)
    specs = read_prompts_file(_file(".csv", buf.getvalue().encode("utf-8")))
    assert [(s.prompt_id, s.prompt, s.group, s.base_seed) for s in specs] == values


@SETTINGS
@given(rows)
def test_jsonl_round_trip_is_exact(values: list[tuple[str, str, str, int]]) -> None:
    lines = [
        json.dumps({"prompt_id": i, "prompt": p, "group": g, "seed": s}) for i, p, g, s in values
    ]
    specs = read_prompts_file(_file(".jsonl", "\n".join(lines).encode("utf-8")))
    assert [(s.prompt_id, s.prompt, s.group, s.base_seed) for s in specs] == values


@SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=6))
def test_a_seed_is_kept_exactly_or_refused(seed: object) -> None:
    line = json.dumps({"prompt": "a cat", "seed": seed})
    try:
        (spec,) = read_prompts_file(_file(".jsonl", line.encode()))
    except AuditError as exc:
        assert "seed" in str(exc) or "not JSON" in str(exc)
        return
    if isinstance(seed, str) and not seed.strip():
        assert spec.base_seed == 0  # an empty cell means "the default seed"
    else:
        assert spec.base_seed == (int(seed) if not isinstance(seed, str) else int(seed.strip()))
        assert float(spec.base_seed) == float(seed) if not isinstance(seed, str) else True


@SETTINGS
@given(st.sampled_from([".csv", ".tsv", ".txt", ".jsonl", ".parquet"]), st.binary(max_size=200))
def test_any_bytes_give_prompts_or_a_named_error(suffix: str, data: bytes) -> None:
    path = _file(suffix, data)
    try:
        specs = read_prompts_file(path)
    except AuditError as exc:
        assert str(path) in str(exc)
        return
    assert specs and all(s.prompt.strip() and SAFE_NAME.fullmatch(s.prompt_id) for s in specs)


@SETTINGS
@given(st.text(max_size=60))
def test_any_config_string_gives_a_config_or_a_named_error(text: str) -> None:
    try:
        config = resolve_config(text)
    except AuditError:
        return
    assert isinstance(config, GuidanceConfig) and SAFE_NAME.fullmatch(config.name)


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "steps": numbers,
            "guidance_scale": numbers,
            "height": numbers,
            "width": numbers,
            "images_per_prompt": numbers,
        },
    )
)
def test_any_numeric_settings_give_a_valid_spec_or_a_named_error(over: dict) -> None:
    try:
        spec = build_spec(
            model="tiny", configs=["sd"], prompts=[{"prompt_id": "a", "prompt": "x"}], **over
        )
    except AuditError as exc:
        assert str(exc).startswith("invalid generation settings")
        return
    assert isinstance(spec, GenerationSpec)
    assert spec.steps >= 1 and spec.height % 8 == 0 and spec.width % 8 == 0
    assert 0 <= spec.guidance_scale <= 100
    for key, value in over.items():  # nothing was coerced into another number
        assert getattr(spec, key) == value
