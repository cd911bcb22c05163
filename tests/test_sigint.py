"""A real SIGINT (Ctrl-C) to a running command exits 130 with the line the README promises:
how many images are kept and how to resume; the re-run then finishes the rest."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

GENERATE = [
    "generate", "--model", "tiny", "--prompt", "a", "--prompt", "b", "--images-per-prompt", "6",
    "--steps", "8", "--height", "32", "--width", "32", "--batch-size", "2",
]  # fmt: skip


def _interrupt_after_first_image(
    argv: list[str], out: Path, pattern: str = "*.png"
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT; a terminal's Ctrl-C does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while not list(out.rglob(pattern)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_sigint_to_generate_says_what_was_kept_and_a_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _interrupt_after_first_image([*GENERATE, "--out", str(out)], out)
    assert done.returncode == 130, done.stderr
    assert "of 12 images of shard-00000-of-00001 are kept" in done.stderr, done.stderr
    assert "re-run the same command to resume" in done.stderr
    assert "Traceback" not in done.stderr
    kept = len(list(out.rglob("*.png")))
    assert 1 <= kept < 12
    again = subprocess.run(
        [sys.executable, "-m", "analysis.cli", *GENERATE, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert len(list(out.rglob("*.png"))) == 12


def test_sigint_to_erase_esd_says_which_checkpoint_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "esd.safetensors"
    argv = ["erase", "esd", "--model", "tiny", "--concept", "nudity", "--iterations", "400",
            "--checkpoint-every", "2", "--out", str(out)]  # fmt: skip
    done = _interrupt_after_first_image(argv, tmp_path, pattern="*.resume.pt")
    assert done.returncode == 130, done.stderr
    assert "of 400 iterations are kept in" in done.stderr, done.stderr
    assert f"nothing was written to {out}" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
