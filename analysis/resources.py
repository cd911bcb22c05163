"""Bundled data files (country table, world TopoJSON, I2P, Q16 prompts) and example audit files,
found in any install.

They live inside the package (analysis/data and analysis/configs, with `data` and `configs` links
at the repository top level), so a wheel install finds them exactly as a source checkout does.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def data_file(name: str) -> Path:
    """Path of a bundled data file."""
    return DATA_DIR / name


def config_file(name: str) -> Path:
    """Path of a shipped example audit file (e.g. demo.toml, which `t2i-audit demo` runs)."""
    return CONFIGS_DIR / name
