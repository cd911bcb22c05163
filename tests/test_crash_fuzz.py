"""Crash fuzz: SIGKILL a small `probe ethnic-bias` run at 20 random points; resuming must converge.

A reference run goes uninterrupted in one folder. Fuzzed runs go in other folders: each is killed
(SIGKILL to its whole process group) at a random moment, re-run, killed again... until a run ends
on its own. The finished fuzzed folders must then equal the reference: PNG bytes, NudeNet score
rows, results CSVs and summary.json. A re-run that ends with a non-zero exit code fails the test
with its output and the kill points that led to it.

Start-up (imports, model load) takes most of a run's first seconds and its length varies with the
machine's load, so most kill points are timed from the run's first write into its folder (the
runtime record written after the model is loaded), not from its start: otherwise every kill lands
in start-up, where nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from analysis.classifiers import read_scores
from analysis.store import RunDir

SEED = 20240611
KILLS = 20  # kill points in total
KILLS_PER_FOLDER = 5  # a folder gets at most this many kills, then one uninterrupted re-run
LANES = 2  # fuzzed folders run side by side (2 cores; every subprocess is single-threaded)
RUN_TIMEOUT_S = 300

ARGS = [
    "probe",
    "ethnic-bias",
    "--model",
    "tiny",
    "--countries",
    "JPN,KEN,BRA",
    "--images-per-country",
    "3",
    "--config",
    "sd",
    "--config",
    "sld-max",
    "--steps",
    "2",
    "--height",
    "32",
    "--width",
    "32",
    "--batch-size",
    "2",
]


def _command(out: Path) -> list[str]:
    cli = Path(__file__).resolve().parents[1] / "analysis" / "cli" / "__main__.py"
    if cli.is_file():
        return [sys.executable, "-m", "analysis.cli", *ARGS, "--out", str(out)]
    return [str(Path(sys.executable).parent / "t2i-audit"), *ARGS, "--out", str(out)]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def _start(out: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            _command(out),
            env=_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the kill reaches every child
        )


def _live_members(group: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            alive.append(int(stat.parent.name))
    return alive


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while _live_members(proc.pid):  # SIGKILL is asynchronous: wait until every child is gone
        assert time.time() < deadline, f"children of {proc.pid} survived SIGKILL"
        time.sleep(0.01)


def _finish(proc: subprocess.Popen, out: Path, log: Path, history: list[str]) -> None:
    """Wait for a run that was not killed; a non-zero exit fails with its output and history."""
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail(f"{out.name}: run did not end within {RUN_TIMEOUT_S} s; history: {history}")
    if rc != 0:
        text = log.read_text(errors="replace")[-6000:]
        pytest.fail(
            f"{out.name}: run exited {rc} after kills {history}\n--- output ---\n{text}",
            pytrace=False,
        )


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _images(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob("images/**/*.png"))}


def _scores(run: Path) -> dict[str, tuple[object, bool]]:
    table = read_scores(RunDir(run), "nudenet")
    return {
        row.item_id: (json.loads(row.raw) if isinstance(row.raw, str) else row.raw, row.verdict)
        for row in table.itertuples()
    }


def _assert_same_run(reference: Path, fuzzed: Path, history: list[str]) -> None:
    where = f"{fuzzed.name} (kills {history})"
    ref_images, got_images = _images(reference), _images(fuzzed)
    assert len(ref_images) == 18
    assert sorted(got_images) == sorted(ref_images), where
    different = [k for k in ref_images if ref_images[k] != got_images[k]]
    assert not different, f"{where}: images differ from the reference: {different}"
    ref_scores, got_scores = _scores(reference), _scores(fuzzed)
    assert len(ref_scores) == 18
    assert got_scores == ref_scores, where
    for name in ("nudity_rates.csv", "paired_tests.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(reference / "results" / name),
            pd.read_csv(fuzzed / "results" / name),
            obj=f"{where}: results/{name}",
        )
    ref_summary = json.loads((reference / "results" / "summary.json").read_text())
    got_summary = json.loads((fuzzed / "results" / "summary.json").read_text())
    assert got_summary == ref_summary, where


def _newest_write_ns(folder: Path) -> int:
    newest = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
            except FileNotFoundError:
                continue
    return newest


def _wait_first_write(out: Path, since_ns: int, proc: subprocess.Popen, until: float) -> bool:
    """Wait until the run writes into `out`, or ends, or `until` passes; True if it wrote."""
    while time.time() < until:
        if _newest_write_ns(out) > since_ns:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    log = tmp_path / "reference.log"
    started = time.time()
    proc = _start(reference, log)
    _finish(proc, reference, log, [])
    duration = time.time() - started
    first_write = _mtime(reference / "parts" / "runtime" / "shard-00000-of-00001.json") - started
    results = _mtime(reference / "results" / "summary.json") - started
    # After the first write: generation, classification, results, then a little of the figures
    # (which take most of a complete run and are not compared).
    window = max(results - first_write, 0.5) + 0.1 * max(duration - results, 0.0)

    lock = threading.Lock()
    budget = {"kills": KILLS}
    log_lines: list[str] = []

    def take_kill() -> bool:
        with lock:
            if budget["kills"] <= 0:
                return False
            budget["kills"] -= 1
            return True

    def give_back_kill() -> None:
        with lock:
            budget["kills"] += 1

    def fuzz(index: int) -> tuple[Path, list[str]] | None:
        rng = random.Random(SEED + index)
        out = tmp_path / f"fuzz-{index}"
        history: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            run_log = tmp_path / f"fuzz-{index}-{attempt}.log"
            kill = len(history) < KILLS_PER_FOLDER and take_kill()
            if not history and not kill:
                return None  # no kill left for a new folder
            since_ns = time.time_ns()
            spawned = time.time()
            proc = _start(out, run_log)
            if not kill:
                _finish(proc, out, run_log, history)
                return out, history
            in_startup = rng.random() < 0.2
            # squared: more kills early on, where generation and classification are short
            fraction = rng.random() if in_startup else rng.random() ** 2
            if in_startup:  # somewhere in the start-up, timed from the spawn
                deadline = spawned + fraction * max(first_write, 0.5)
                point = f"{deadline - spawned:.2f} s after start"
            else:  # timed from the run's first write into its folder
                wrote = _wait_first_write(out, since_ns, proc, spawned + RUN_TIMEOUT_S)
                deadline = time.time() + fraction * window
                point = f"{fraction * window:.2f} s after its first write" if wrote else None
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            if proc.poll() is None:
                _kill_group(proc)
                history.append(f"attempt {attempt} killed {point or 'at the end'}")
                with lock:
                    log_lines.append(f"{out.name}: {history[-1]}")
                continue
            # ended on its own before the kill point: that point was not a kill
            give_back_kill()
            _finish(proc, out, run_log, history)
            return out, history

    finished: list[tuple[Path, list[str]]] = []
    index = 0
    with ThreadPoolExecutor(max_workers=LANES) as pool:
        while budget["kills"] > 0 and index < 8 * KILLS:
            batch = [pool.submit(fuzz, index + i) for i in range(LANES)]
            index += LANES
            finished += [r for r in (f.result() for f in batch) if r is not None]

    kills = sum(len(h) for _, h in finished)
    assert kills == KILLS, log_lines
    for out, history in finished:
        _assert_same_run(reference, out, history)
