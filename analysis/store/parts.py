"""Append-only, per-shard part files: how a stage records finished work so a crash loses little.

Each stage (e.g. "generate", "classify-nudenet") appends JSON lines to
`parts/<stage>/<shard>.jsonl`, flushed and fsynced after every batch. A process killed mid-write
leaves at most one torn last line, which readers skip. Shards never share a file, so many GPUs
can write into one run directory at once.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis.errors import AuditError
from analysis.store.ownership import contained
from analysis.store.sharding import Shard

if TYPE_CHECKING:
    from analysis.store.rundir import RunDir


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class PartWriter:
    """Durable appender of result rows for one stage and one shard."""

    def __init__(self, run: RunDir, stage: str, shard: Shard) -> None:
        self.path = contained(run.parts_dir / stage / f"{shard.name}.jsonl")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise AuditError(f"cannot write to {self.path.parent}: permission denied") from exc

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows and make them durable before returning."""
        if not rows:
            return
        text = "".join(json.dumps(r, default=_default, sort_keys=True) + "\n" for r in rows)
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                if fh.tell() > 0:
                    self._repair_tail()
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise AuditError(
                f"could not record results in {self.path}: {exc.strerror or exc}; "
                "finished work up to the last batch is kept, re-run to resume"
            ) from exc

    def _repair_tail(self) -> None:
        """A torn last line (crash mid-write) gets a newline so the next row starts cleanly."""
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def read_parts(run: RunDir, stage: str) -> pd.DataFrame:
    """All rows of a stage from every shard, in file order; torn or corrupt lines are skipped."""
    folder = run.parts_dir / stage
    frames = [_read_part(p) for p in sorted(folder.glob("*.jsonl"))] if folder.is_dir() else []
    frames = [f for f in frames if not f.empty]
    if len(frames) <= 1:
        return frames[0] if frames else pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def _read_part(path: Path) -> pd.DataFrame:
    """One part file. Arrow's JSON-lines reader (C++, ~3x faster than json.loads per line at
    282k rows) reads an intact file; a torn or corrupt line, a non-object line or a type it
    cannot unify makes it fail, and then every line is parsed on its own."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    try:
        return pa_json.read_json(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError):
        pass
    with open(path, encoding="utf-8", errors="replace") as fh:
        return pd.DataFrame(_parse_lines(fh.read().splitlines()))


def _parse_lines(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON objects among lines. One json.loads of the whole file as an array is ~3x faster
    than one per line; a torn or corrupt line makes it fail, and only then is each line tried."""
    lines = [line for line in lines if line.strip()]
    try:
        parsed = json.loads("[" + ",".join(lines) + "]")
        if len(parsed) == len(lines):  # a line holding two values would shift the rows
            return [row for row in parsed if isinstance(row, dict)]
    except json.JSONDecodeError:
        pass
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def part_sizes(run: RunDir, stage: str) -> dict[Path, int]:
    """Byte size of every part file of a stage now: what a consolidation is about to cover."""
    folder = run.parts_dir / stage
    return {p: p.stat().st_size for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}


def retire_parts(run: RunDir, stage: str, covered: dict[Path, int]) -> int:
    """Move part files whose rows are now in the consolidated table out of the read path.

    Later reads then parse only rows added since. A file that grew after `covered` was taken is
    left in place; bytes appended in the instant between the check and the move are copied
    back into a new part file, so no row is ever lost. Returns the number of files retired.
    """
    folder = run.parts_dir / stage
    merged = folder / "merged"
    retired = 0
    for path, size in covered.items():
        try:
            if path.stat().st_size != size:
                continue
            merged.mkdir(exist_ok=True)
            target = merged / f"{path.stem}-{uuid.uuid4().hex[:8]}.jsonl"
            os.replace(path, target)
        except FileNotFoundError:
            continue
        retired += 1
        with open(target, "rb") as fh:
            fh.seek(size)
            late = fh.read()
        if late:  # appended between the size check and the move
            recovered = folder / f"{path.stem}-recovered-{uuid.uuid4().hex[:8]}.jsonl"
            with open(recovered, "ab") as out:
                out.write(late if late.startswith(b"{") else late.split(b"\n", 1)[-1])
                out.flush()
                os.fsync(out.fileno())
    return retired
