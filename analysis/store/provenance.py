"""What produced a result: package versions, the toolkit's git commit, host and time."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from analysis.numerics import numerics_info

PACKAGES = (
    "t2i-audit",
    "torch",
    "diffusers",
    "transformers",
    "nudenet",
    "onnxruntime",
    "numpy",
    "pandas",
    "scipy",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (None when a package is absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict[str, Any]:
    """The toolkit's own git commit and whether its tree had local changes (None outside git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": bool(dirty)}


def environment_info() -> dict[str, Any]:
    """Everything about the software and machine worth echoing next to a result."""
    return {
        "versions": package_versions(),
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "numerics": numerics_info(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
