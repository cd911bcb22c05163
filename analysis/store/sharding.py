"""Which share of the work this process does: --shard i/N, torchrun, or a SLURM array.

Every source of (i, N) goes through one check, `_shard`, so a bad value from the command line,
torchrun or SLURM is refused with the name of the option or variable it came from, before any
work: an unchecked N would silently give this process nothing (N too big) or everything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import pandas as pd

from analysis.errors import AuditError

T = TypeVar("T")

#: shard names are fixed-width ('shard-00003-of-00008'), so N has at most five digits
MAX_SHARDS = 99_999


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based). Shards are disjoint; their union is all the work."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        _check(self.index, self.count, "shard")

    @property
    def name(self) -> str:
        """File-name-safe label, e.g. 'shard-00003-of-00008'."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def take(self, work: pd.DataFrame | Sequence[T]) -> pd.DataFrame | list[T]:
        """This shard's share, round-robin over the given (deterministic) order."""
        if isinstance(work, pd.DataFrame):
            return work.iloc[self.index :: self.count]
        return list(work)[self.index :: self.count]


def _check(index: object, count: object, source: str) -> None:
    """The one range check of (i, N), whatever `source` (option or variables) gave them."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise AuditError(f"invalid shard {index!r}/{count!r} ({source}): i and N must be integers")
    assert isinstance(index, int) and isinstance(count, int)
    if not 1 <= count <= MAX_SHARDS:
        raise AuditError(
            f"invalid shard {index}/{count} ({source}): the number of shards N must be "
            f"1 .. {MAX_SHARDS:,}"
        )
    if not 0 <= index < count:
        raise AuditError(f"invalid shard {index}/{count} ({source}): need 0 <= i < N")


def parse_shard(value: str) -> Shard:
    """Parse 'i/N' (0-based i)."""
    parts = value.split("/")
    try:
        if len(parts) != 2 or max(len(p) for p in parts) > 12:
            raise ValueError(value)
        i, n = (int(part) for part in parts)
    except ValueError:
        raise AuditError(f"--shard must look like i/N (e.g. 0/4), got {value!r:.60}") from None
    _check(i, n, "--shard")
    return Shard(i, n)


def resolve_shard(cli_value: str | None = None, env: dict[str, str] | None = None) -> Shard:
    """Shard from the CLI, else torchrun's RANK/WORLD_SIZE, else a SLURM array, else the whole run.

    SLURM arrays may start at any index (e.g. --array=1-8): the task id is taken relative to
    SLURM_ARRAY_TASK_MIN. WORLD_SIZE without RANK (or the reverse) is refused: every process
    would otherwise do the whole run.
    """
    if cli_value:
        return parse_shard(cli_value)
    env = dict(os.environ) if env is None else env

    def number(name: str, default: str | None = None) -> int:
        value = str(env.get(name, default))
        shown = repr(value) if len(value) <= 24 else f"'{value[:12]}...' ({len(value)} characters)"
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            raise AuditError(
                f"environment variable {name}={shown} is not a whole number (sharding)"
            )
        if len(value.strip().lstrip("+-")) > 12:  # no real rank or count; int() of it is slow
            raise AuditError(
                f"environment variable {name}={shown} is out of range (sharding): at most "
                f"{MAX_SHARDS:,} shards"
            )
        return int(value)

    torch_vars = [name for name in ("RANK", "WORLD_SIZE") if name in env]
    if len(torch_vars) == 1 and not (torch_vars == ["WORLD_SIZE"] and number("WORLD_SIZE") == 1):
        other = "WORLD_SIZE" if torch_vars == ["RANK"] else "RANK"
        raise AuditError(
            f"environment variable {torch_vars[0]} is set but {other} is not (sharding): "
            "set both, as torchrun does, or pass --shard i/N"
        )
    if len(torch_vars) == 2:
        rank, size = number("RANK"), number("WORLD_SIZE")
        _check(rank, size, f"RANK={rank}, WORLD_SIZE={size}")
        return Shard(rank, size)
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        low, task = number("SLURM_ARRAY_TASK_MIN", "0"), number("SLURM_ARRAY_TASK_ID")
        count = number("SLURM_ARRAY_TASK_COUNT")
        source = (
            f"SLURM_ARRAY_TASK_ID={task} - SLURM_ARRAY_TASK_MIN={low}, "
            f"SLURM_ARRAY_TASK_COUNT={count}"
        )
        _check(task - low, count, source)
        return Shard(task - low, count)
    return Shard(0, 1)
