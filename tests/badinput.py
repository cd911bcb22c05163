"""Shared pieces of the bad-input tables: a Case, file writers and the standard argv prefixes.

Each area keeps its own cases in `tests/bad_inputs_<area>.py` (a list `CASES`), and
`tests/test_bad_inputs.py` runs all of them through the one check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def _write(name: str, data: str | bytes) -> Callable[[Path, Path], None]:
    def setup(tmp: Path, run: Path) -> None:
        path = tmp / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def _corrupt(rel: str, data: bytes = b"\x00garbage\xff" * 8) -> Callable[[Path, Path], None]:
    def setup(tmp: Path, run: Path) -> None:
        (run / rel).write_bytes(data)

    return setup


@dataclass
class Case:
    id: str
    argv: list[str]
    names: str  # a piece of the message that names the input
    setup: Callable[[Path, Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    new_out: bool = False  # the command would create {tmp}/new: it must not exist afterwards
    changes: tuple[str, ...] = ()  # files the case itself corrupted (excluded from the check)


GEN = ["generate", "--out", "{tmp}/new", "--steps", "1", "--height", "32", "--width", "32"]
PROBE = ["probe", "ethnic-bias", "--out", "{tmp}/new", "--countries", "JPN", "--steps", "1"]
PROMPTS = [*GEN, "--prompts-file"]
I2P_SET = ["i2p", "run", "--out", "{tmp}/new", "--model", "tiny", "--prompts", "{tmp}/set.csv"]
ERASE = ["erase", "esd", "--model", "tiny", "--concept", "nudity"]
QUALITY = ["quality", "generate", "--model", "tiny", "--n", "2", "--out", "{tmp}/new"]
