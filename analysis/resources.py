"""Bundled data files (country table, world TopoJSON, I2P, Q16 prompts), found in any install.

They live inside the package (analysis/data, with a `data` link at the repository top level), so
a wheel install finds them exactly as a source checkout does.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


def data_file(name: str) -> Path:
    """Path of a bundled data file."""
    return DATA_DIR / name
