"""Who may write where: run folders are recognised by any of their files, every write stays inside
its run, an output is never an input or a run's own file, and one process writes a shard.

Three guards, each used by every command instead of a check per command:
- `check_output(out, inputs=...)`: a user-chosen output path (a report, a table folder, a weight
  file) is refused when it is one of the command's inputs, a file or folder a run owns, or not
  writable (read-only folder, full disk) -- before any work starts.
- `contained(path)`: every file write (atomic writes, part files) whose path lies in a run folder
  must resolve inside that folder, so a symlinked `scores/` cannot send results elsewhere.
- `hold_shard(run, shard)` and `hold_claim(run)`: an advisory `flock` per run and shard, held for a
  whole command; a second writer of the same shard, or one claiming the folder for other settings
  while another writes, is refused with one line naming the holder. Shards of one run write side
  by side. A process that dies releases its locks (the kernel drops them with the descriptor).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from analysis.errors import AuditError

#: any of these in a folder makes it a run (a missing or damaged manifest does not make it a
#: plain folder that a command may re-initialise)
RUN_MARKERS = ("manifest.json", "items.parquet", "parts", "scores", "locks")
#: what a run owns: no command may write there on a user's say-so (only the run's own stages);
#: models/ is not listed: it holds side-by-side runs (--unet-config), each a run of its own
RUN_OWNED = ("manifest.json", "items.parquet", "images", "scores", "parts", "locks")
LOCKS = "locks"
#: below this much free space an output folder counts as full (a table, a figure, a report)
MIN_FREE_BYTES = 1 << 20


def run_markers(folder: Path) -> list[str]:
    """The run files present in `folder` (empty for a plain folder)."""
    return [m for m in RUN_MARKERS if (Path(folder) / m).exists()]


def is_run(folder: Path) -> bool:
    """True when `folder` holds any run file, even without a readable manifest."""
    return bool(run_markers(folder))


def run_root(path: Path) -> Path | None:
    """The run folder that `path` lies in or is (resolved), or None."""
    real = Path(path).resolve()
    for folder in (real, *real.parents):
        if folder.is_dir() and is_run(folder):
            return folder
    return None


def contained(path: Path) -> Path:
    """`path`, after checking that a write there stays inside the run folder it lexically lies in.

    The lexical parent is where the caller meant to write (`RUN/scores/x.parquet`); the resolved
    path is where the bytes would land. A symlinked sub-folder of a run pointing elsewhere fails.
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    for folder in absolute.parents:
        if (folder / "manifest.json").is_file() or (folder / "items.parquet").is_file():
            root = folder.resolve()
            real = absolute.parent.resolve() / absolute.name
            if real.is_symlink():
                real = real.resolve()
            if root != real and root not in real.parents:
                raise AuditError(
                    f"refusing to write {path}: it resolves to {real}, outside the run {folder} "
                    "(a symlinked file or sub-folder); replace the link with a real folder"
                )
            break
    return path


def check_output(
    out: Path,
    *,
    inputs: Iterable[Path | str | None] = (),
    folder: bool = False,
    option: str = "--out",
    may_be_run: bool = False,
) -> Path:
    """Refuse an output path that would overwrite an input, a run's own files, or cannot be written.

    `folder=True` for outputs that are folders (tables, figures); `may_be_run=True` when the
    command's output *is* a run folder (generate, probe) and re-opening one is how it resumes.
    """
    out = Path(out)
    real = out.resolve()
    for given in inputs:
        if given is not None and real == Path(given).resolve():
            raise AuditError(f"{option} {out} is also an input of this command ({given})")
    root = run_root(real if real.exists() else real.parent)
    if root is not None:
        if real == root and not may_be_run:
            raise AuditError(
                f"{option} {out} is a t2i-audit run folder; write outputs to another folder "
                "(or a new sub-folder of the run)"
            )
        if real != root:
            _refuse_run_owned(out, real, root, option)
    writable_or_refuse(out, option)
    return out


def _refuse_run_owned(out: Path, real: Path, root: Path, option: str) -> None:
    first = real.relative_to(root).parts[0]
    if first in RUN_OWNED:
        raise AuditError(
            f"{option} {out} is inside run {root}'s own {first!r}; that would overwrite the "
            "run's files: choose a path outside them (e.g. RUN/results or another folder)"
        )


def writable_or_refuse(out: Path, option: str = "--out") -> None:
    """One early check that an output path can be written: its nearest existing folder is a
    writable directory with some free space (read-only or full disks fail here, not mid-run)."""
    probe = Path(out).resolve()
    while not probe.exists():
        probe = probe.parent
    if probe.is_file():
        probe = probe.parent if probe == Path(out).resolve() else probe
        if not probe.is_dir():
            raise AuditError(f"{option} {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise AuditError(f"{option} {out} is not writable ({probe}: permission denied)")
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < MIN_FREE_BYTES:
        raise AuditError(f"{option} {out}: the disk holding {probe} is full ({free} bytes free)")


# ---------------------------------------------------------------- locks


_held: dict[tuple[str, str], list[Any]] = {}  # (run, shard) -> [fd, depth]
_guard = threading.Lock()


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["t2i-audit", *sys.argv[1:]])[:300],
    }


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"(`{info.get('command')}`)"
        )
    except (OSError, ValueError):
        return "another process"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on path, or None when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


@contextmanager
def hold_shard(run: Path, shard: str, settings: str | None = None) -> Iterator[None]:
    """Hold the write lock of one shard of a run for the duration of a command (re-entrant in
    one process: a probe classifies inside its own generation)."""
    lock = (Path(run) / LOCKS / f"{shard}.lock").resolve()
    key = (str(lock.parent.parent), shard)
    with _guard:
        if key in _held:
            _held[key][1] += 1
            fd = None
        else:
            try:
                contained(lock)
                fd = _try_lock(lock)
            except OSError as exc:
                raise AuditError(f"cannot lock {run} for writing: {exc.strerror or exc}") from exc
            if fd is None:
                raise AuditError(
                    f"{run} ({shard}) is being written by {_describe(lock)}; wait for it to "
                    "finish or write to another --out (shards of one run use --shard i/N)"
                )
            info = {**_holder(), "shard": shard, "settings": settings}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # releases the flock; the file stays (it names no one now)


def busy_shards(run: Path, settings: str | None = None) -> list[str]:
    """Descriptions of other processes writing `run` now (with other settings, if given)."""
    folder = Path(run) / LOCKS
    if not folder.is_dir():
        return []
    busy = []
    for lock in sorted(folder.glob("shard-*.lock")):
        if (str(lock.resolve().parent.parent), lock.stem) in _held:
            continue
        fd = _try_lock(lock)
        if fd is not None:
            os.close(fd)
            continue
        if settings is not None:
            try:
                if json.loads(lock.read_text(encoding="utf-8")).get("settings") == settings:
                    continue
            except (OSError, ValueError):
                pass
        busy.append(f"{lock.stem} by {_describe(lock)}")
    return busy


@contextmanager
def hold_claim(run: Path) -> Iterator[None]:
    """Serialise claiming (or extending) a run folder: the check 'is it ours?' and the write of
    its plan happen under one lock, so two starts on one new folder cannot both claim it."""
    lock = Path(run) / LOCKS / "claim.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise AuditError(f"cannot write to {run}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a moment by whoever claims
        yield
    finally:
        os.close(fd)
