"""Run-directory primitives: atomic writes, append-only parts, shard resolution."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

import pandas as pd
import pytest

from analysis.errors import AuditError
from analysis.store import PartWriter, RunDir, Shard, atomic_write_text, read_parts, resolve_shard


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(AuditError, match="permission denied"):
            atomic_write_text(tmp_path / "x" / "y.txt", "z")
    finally:
        tmp_path.chmod(0o700)


def test_folder_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(AuditError, match="cannot write to"):
        atomic_write_text(tmp_path / "file" / "sub" / "y.txt", "z")


def test_disk_full_keeps_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "table.txt"
    atomic_write_text(target, "complete old content")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(AuditError, match="No space left"):
        atomic_write_text(target, "new content that never fully lands")
    assert target.read_text() == "complete old content"
    assert [p.name for p in tmp_path.iterdir()] == ["table.txt"]


def test_parts_survive_a_torn_tail(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    w = PartWriter(run, "generate", Shard(0, 2))
    w.append([{"item_id": "a", "status": "done"}, {"item_id": "b", "status": "done"}])
    with open(w.path, "a") as fh:  # a crash in the middle of a line
        fh.write('{"item_id": "c", "sta')
    w.append([{"item_id": "d", "status": "done"}])
    PartWriter(run, "generate", Shard(1, 2)).append([{"item_id": "e", "status": "error"}])
    rows = read_parts(run, "generate")
    assert rows["item_id"].tolist() == ["a", "b", "d", "e"]


def test_shards_are_disjoint_and_cover_everything() -> None:
    work = list(range(23))
    shares = [Shard(i, 4).take(work) for i in range(4)]
    assert sorted(itertools.chain.from_iterable(shares)) == work
    assert sum(len(s) for s in shares) == len(work)
    df = pd.DataFrame({"x": work})
    assert Shard(1, 4).take(df)["x"].tolist() == shares[1]


def test_resolve_shard_sources() -> None:
    assert resolve_shard("2/5", env={}) == Shard(2, 5)
    assert resolve_shard(None, env={"RANK": "3", "WORLD_SIZE": "8"}) == Shard(3, 8)
    slurm = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert resolve_shard(None, env=slurm) == Shard(3, 4)
    assert resolve_shard(None, env={}) == Shard(0, 1)
    with pytest.raises(AuditError, match="i/N"):
        resolve_shard("3", env={})
    with pytest.raises(AuditError, match="invalid shard"):
        resolve_shard("4/4", env={})


def test_missing_manifest_is_explained(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="not a t2i-audit run"):
        RunDir(tmp_path).read_manifest()


def test_read_parts_fast_path_equals_line_by_line(tmp_path: Path) -> None:
    """The whole-file parse gives exactly the rows a per-line json.loads keeps, damage or not."""
    import json

    from analysis.store.parts import _parse_lines

    good = ['{"item_id": "a", "n": 1}', '{"item_id": "b", "n": [1, 2]}', '{"item_id": "c"}']
    cases = [
        good,
        [*good[:2], '{"item_id": "x", "sta', good[2]],  # torn line in the middle
        [good[0], '{"a": [', "1]}", good[1]],  # two torn halves that join into valid JSON
        [good[0], '{"a": 1}, {"b": 2}', good[1]],  # one line holding two objects
        [good[0], "[1, 2]", "", "  ", "7", good[2]],  # non-objects and blank lines
    ]
    for lines in cases:
        oracle = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                oracle.append(row)
        assert _parse_lines(lines) == oracle, lines


def test_items_take_the_latest_part_status_and_merge_compacts(tmp_path: Path) -> None:
    from analysis.store import atomic_write_parquet
    from analysis.store.rundir import ITEM_COLUMNS

    run = RunDir(tmp_path)
    plan = pd.DataFrame(
        {
            c: ["x"] * 3 if c not in {"item_id", "status", "error"} else [None] * 3
            for c in ITEM_COLUMNS
        }
    )
    plan["item_id"], plan["status"] = ["a", "b", "c"], "pending"
    atomic_write_parquet(plan, run.items_path)
    w = PartWriter(run, "generate", Shard())
    w.append([{"item_id": "a", "status": "error", "image_path": "p/a.png", "error": "nan"}])
    w.append([{"item_id": "a", "status": "done", "image_path": "p/a.png", "error": None}])
    w.append([{"item_id": "c", "status": "done", "image_path": "p/c.png", "error": None}])
    items = run.items()
    assert items["status"].tolist() == ["done", "pending", "done"]
    assert items["image_path"].tolist() == ["p/a.png", "x", "p/c.png"]
    assert items["error"].isna().all()
    run.consolidate_items(compact=True)
    assert not list(run.parts_dir.joinpath("generate").glob("*.jsonl"))  # retired
    assert run.items()["status"].tolist() == ["done", "pending", "done"]  # parquet alone


def test_arrow_reader_gives_the_line_parser_frame(tmp_path: Path) -> None:
    """Intact parts are read by Arrow; the frame equals the per-line parse, nulls and all."""
    from analysis.store.parts import _parse_lines

    run = RunDir(tmp_path)
    w = PartWriter(run, "classify-x", Shard())
    rows = [
        {"item_id": f"i{k}", "verdict": [True, False, None][k % 3], "seconds": k / 7}
        | {"error": None if k % 4 else "bad file", "raw": '[{"class": "A", "score": 0.5}]'}
        for k in range(50)
    ]
    w.append(rows[:20])
    w.append(rows[20:])
    lines = w.path.read_text().splitlines()
    pd.testing.assert_frame_equal(read_parts(run, "classify-x"), pd.DataFrame(_parse_lines(lines)))
