"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Write to a temporary file in the same folder, fsync, then os.replace. A crash or a full disk
leaves at worst a stray `.tmp-*` file, which readers ignore.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image

from analysis.errors import AuditError
from analysis.store.ownership import contained


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(old)
    return old


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to path atomically, creating parent folders.

    The file gets the permissions of a normally created one (0666 minus the umask): mkstemp's
    private 0600 would hide results from the collaborators the umask allows.
    """
    path = contained(Path(path))  # a write into a run never leaves it through a symlink
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as exc:
        reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or exc
        raise AuditError(f"cannot write to {path.parent}: {reason}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AuditError(f"could not write {path}: {exc.strerror or exc}") from exc


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame as Parquet atomically (no index)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_png(image: Image.Image, path: Path) -> None:
    """Save a PNG atomically; PIL writes no timestamp, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet table, or one AuditError naming the damaged file."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise AuditError(f"{path} is missing") from None
    except Exception as exc:  # pyarrow raises several types for a damaged file
        reason = " ".join(str(exc).split())[:160]
        raise AuditError(
            f"{path} is not a readable Parquet table ({reason}); restore it from a backup or "
            "re-run `t2i-audit merge` on the run to rebuild it from its parts"
        ) from None
