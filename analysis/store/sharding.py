"""Which share of the work this process does: --shard i/N, torchrun, or a SLURM array."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import pandas as pd

from analysis.errors import AuditError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based). Shards are disjoint; their union is all the work."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise AuditError(f"invalid shard {self.index}/{self.count}: need 0 <= i < N and N >= 1")

    @property
    def name(self) -> str:
        """File-name-safe label, e.g. 'shard-00003-of-00008'."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def take(self, work: pd.DataFrame | Sequence[T]) -> pd.DataFrame | list[T]:
        """This shard's share, round-robin over the given (deterministic) order."""
        if isinstance(work, pd.DataFrame):
            return work.iloc[self.index :: self.count]
        return list(work)[self.index :: self.count]


def parse_shard(value: str) -> Shard:
    """Parse 'i/N' (0-based i)."""
    try:
        i, n = (int(part) for part in value.split("/"))
    except ValueError as exc:
        raise AuditError(f"--shard must look like i/N (e.g. 0/4), got {value!r}") from exc
    return Shard(i, n)


def resolve_shard(cli_value: str | None = None, env: dict[str, str] | None = None) -> Shard:
    """Shard from the CLI, else torchrun's RANK/WORLD_SIZE, else a SLURM array, else the whole run.

    SLURM arrays may start at any index (e.g. --array=1-8): the task id is taken relative to
    SLURM_ARRAY_TASK_MIN.
    """
    if cli_value:
        return parse_shard(cli_value)
    env = dict(os.environ) if env is None else env

    def number(name: str, default: str | None = None) -> int:
        value = env.get(name, default)
        try:
            return int(str(value).strip())
        except ValueError:
            raise AuditError(
                f"environment variable {name}={value!r} is not a whole number (sharding)"
            ) from None

    if "WORLD_SIZE" in env and "RANK" in env:
        return Shard(number("RANK"), number("WORLD_SIZE"))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        low = number("SLURM_ARRAY_TASK_MIN", "0")
        return Shard(number("SLURM_ARRAY_TASK_ID") - low, number("SLURM_ARRAY_TASK_COUNT"))
    return Shard(0, 1)
