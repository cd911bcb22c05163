"""Finished work is never overwritten, nothing is written outside a run, one writer per shard.

Each test runs the real entry point on a finished tiny run (or two real processes at once) and
compares every file's bytes before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import tiny_probe

from analysis.cli import main
from analysis.store.ownership import busy_shards, hold_shard

SHARD = "shard-00000-of-00001"
GEN = ["--steps", "1", "--height", "32", "--width", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("own") / "run"
    tiny_probe(out, countries=["JPN"], images_per_country=1)
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file but the lock files (they name the last writer)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.parent.name != "locks"
    }


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    if exc.value.code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    return int(exc.value.code or 0), err + out


def images(tmp_path: Path) -> Path:
    folder = tmp_path / "pngs"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "a.png")
    return folder


def test_classify_of_a_folder_into_a_finished_run_is_refused(run, tmp_path, capsys) -> None:
    before = digest(run)
    code, err = cli(capsys, "classify", images(tmp_path), "--out", run)
    assert code == 2 and "already holds another run" in err
    assert digest(run) == before


@pytest.mark.parametrize("damage", ["missing", "garbage", "a-list"])
def test_a_run_without_a_readable_manifest_is_never_reinitialised(run, capsys, damage: str) -> None:
    manifest = run / "manifest.json"
    if damage == "missing":
        manifest.unlink()
    else:
        manifest.write_text("{not json" if damage == "garbage" else "[1, 2]")
    before = digest(run)
    for argv in (
        ["classify", run],
        ["generate", "--out", run, "--model", "tiny", "--prompt", "x", *GEN],
    ):
        code, err = cli(capsys, *argv)
        assert code == 2, err
        assert "manifest.json" in err
    assert digest(run) == before


@pytest.mark.parametrize(
    "target", ["items.parquet", "manifest.json", "scores/nudenet.parquet", "parts/x.jsonl", "."]
)
def test_report_never_writes_onto_a_runs_own_files(run, capsys, target: str) -> None:
    before = digest(run)
    code, err = cli(capsys, "report", run, "--out", run / target)
    assert code == 2 and str(run) in err
    assert digest(run) == before


def test_report_may_go_inside_a_run_beside_its_files(run, capsys) -> None:
    code, err = cli(capsys, "report", run, "--out", run / "report.html")
    assert code == 0, err
    assert (run / "report.html").is_file()


def test_report_onto_one_of_its_inputs_is_refused(run, tmp_path, capsys) -> None:
    guard = tmp_path / "g"
    guard.mkdir()
    (guard / "guardrails.csv").write_text("x\n1\n")
    code, err = cli(capsys, "report", run, "--guardrails", guard, "--out", guard)
    assert code == 2 and "is also an input" in err


def test_a_symlinked_run_folder_cannot_send_writes_elsewhere(run, tmp_path, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run / "scores", elsewhere)
    (run / "scores").symlink_to(elsewhere, target_is_directory=True)
    before = digest(elsewhere)
    (elsewhere / "nudenet.parquet").unlink()  # so classify has work to write
    code, err = cli(capsys, "classify", run)
    assert code == 2 and "outside the run" in err
    assert set(digest(elsewhere)) == set(before) - {"nudenet.parquet"}


def test_a_symlinked_image_folder_cannot_send_pngs_elsewhere(run, tmp_path, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run / "images", elsewhere)
    (run / "images").symlink_to(elsewhere, target_is_directory=True)
    next(elsewhere.rglob("*.png")).unlink()
    spec = json.loads((run / "manifest.json").read_text())["spec"]
    assert spec["model"] == "tiny"
    with pytest.raises(Exception, match="outside the run"):
        tiny_probe(run, countries=["JPN"], images_per_country=1)
    assert len(list(elsewhere.rglob("*.png"))) == 1  # of 2: nothing was written there


HOLD = textwrap.dedent(
    """
    import sys, time
    from analysis.store.ownership import hold_shard
    with hold_shard(sys.argv[1], sys.argv[2], "someone"):
        print("held", flush=True)
        time.sleep(float(sys.argv[3]))
    """
)


def _holder(run: Path, shard: str = SHARD, seconds: float = 60) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), shard, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_of_a_shard_is_refused_naming_the_holder(run, capsys) -> None:
    proc = _holder(run)
    try:
        before = digest(run)
        (next((run / "images").rglob("*.png"))).unlink()  # work to do, so it would write
        before = digest(run)
        code, err = cli(capsys, "classify", run)
        assert code == 2 and f"pid {proc.pid}" in err and "being written" in err
        with pytest.raises(Exception, match=f"pid {proc.pid}"):
            tiny_probe(run, countries=["JPN"], images_per_country=1)
        assert digest(run) == before
        assert busy_shards(run) and f"pid {proc.pid}" in busy_shards(run)[0]
    finally:
        proc.kill()
        proc.wait()
    # the holder is gone (killed, not released): its lock went with it
    assert busy_shards(run) == []
    with hold_shard(run, SHARD):
        pass


def test_other_shards_of_one_run_still_write_side_by_side(run) -> None:
    proc = _holder(run, "shard-00001-of-00002")
    try:
        with hold_shard(run, "shard-00000-of-00002"), hold_shard(run, "shard-00000-of-00002"):
            pass  # re-entrant in one process, beside another process's shard
    finally:
        proc.kill()
        proc.wait()


GENERATE = textwrap.dedent(
    """
    import sys
    from analysis.cli import main
    main(["generate", "--model", "tiny", "--out", sys.argv[1], "--prompt", sys.argv[2],
          "--steps", "1", "--height", "32", "--width", "32", "--images-per-prompt", "2"])
    """
)


def test_two_starts_with_different_settings_on_one_new_folder_one_wins(tmp_path) -> None:
    out = tmp_path / "new"
    env = {**os.environ, "COLUMNS": "200"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GENERATE, str(out), prompt],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for prompt in ("a red cat", "a blue dog")
    ]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "different settings" in loser, loser
    manifest = json.loads((out / "manifest.json").read_text())
    winner = manifest["spec"]["prompts"][0]["prompt"]
    rows = [json.loads(line) for p in (out / "parts").rglob("*.jsonl") for line in p.open()]
    import pandas as pd

    plan = pd.read_parquet(out / "items.parquet")
    assert set(plan["prompt"]) == {winner}
    assert {r["item_id"] for r in rows} == set(plan["item_id"])
    assert len(list((out / "images").rglob("*.png"))) == 2


def test_a_failed_start_of_an_audit_writes_nothing(tmp_path, capsys) -> None:
    audit = tmp_path / "a.toml"
    audit.write_text(
        textwrap.dedent(
            """
            configs = ["sd"]
            [[models]]
            name = "m"
            model = "tiny"
            [sampler]
            steps = 1
            height = 32
            width = 32
            [probe]
            countries = ["JPN"]
            images_per_country = 1
            """
        )
    )
    out = tmp_path / "out"
    start = time.time()
    code, err = cli(capsys, "run", audit, "--out", out, "--set", 'sampler.device="cuda:9"')
    assert code == 2 and "cuda:9" in err
    assert not out.exists()
    assert time.time() - start < 60


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--model", "tiny", "--prompt", "x", *GEN, "--out", "{tmp}/new"],
        ["report", "{run}", "--out", "{tmp}/new/report.html"],
        ["classify", "{pngs}", "--out", "{tmp}/new"],
    ],
    ids=["generate", "report", "classify"],
)
def test_a_full_disk_is_one_line_before_any_work(run, tmp_path, capsys, monkeypatch, argv) -> None:
    import shutil as sh

    from analysis.store import ownership

    pngs = images(tmp_path)
    usage = sh.disk_usage(tmp_path)
    monkeypatch.setattr(ownership.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    before = digest(run)
    code, err = cli(capsys, *[a.format(tmp=tmp_path, run=run, pngs=pngs) for a in argv])
    assert code == 2 and "is full (4096 bytes free)" in err
    assert not (tmp_path / "new").exists()
    assert digest(run) == before


def test_an_output_under_a_file_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    code, err = cli(
        capsys, "generate", "--model", "tiny", "--prompt", "x", *GEN, "--out", tmp_path / "f" / "r"
    )
    assert code == 2 and "is a file, not a folder" in err
