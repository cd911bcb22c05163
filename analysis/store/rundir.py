"""The run directory: the on-disk contract every stage shares (see DESIGN.md).

runs/<name>/manifest.json, items.parquet, images/<config>/<prompt_id>/<image_index>.png,
scores/<classifier>.parquet, parts/<stage>/<shard>.jsonl. Consolidated tables are written
atomically; parts are append-only and merged on read, so readers always see every finished item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.errors import AuditError
from analysis.store.atomic import atomic_write_parquet, atomic_write_text, read_parquet
from analysis.store.ownership import LOCKS, run_markers
from analysis.store.parts import part_sizes, read_parts, retire_parts

ITEM_COLUMNS = [
    "item_id",
    "prompt_id",
    "prompt",
    "group",
    "config",
    "seed",
    "image_index",
    "guidance_scale",
    "status",
    "image_path",
    "error",
]


class RunDir:
    """Paths and readers of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def items_path(self) -> Path:
        return self.path / "items.parquet"

    @property
    def images_dir(self) -> Path:
        return self.path / "images"

    @property
    def scores_dir(self) -> Path:
        return self.path / "scores"

    @property
    def parts_dir(self) -> Path:
        return self.path / "parts"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    @property
    def figures_dir(self) -> Path:
        return self.path / "figures"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def looks_like_run(self) -> bool:
        """Any run file is here (plan, parts, scores...), whether or not the manifest is readable:
        such a folder is never treated as a plain folder and re-initialised."""
        return bool([m for m in run_markers(self.path) if m != LOCKS])

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or an AuditError saying this is not a run directory."""
        if not self.manifest_path.is_file() and self.looks_like_run():
            raise AuditError(
                f"{self.path} is a t2i-audit run whose manifest.json is missing (it has "
                f"{', '.join(m for m in run_markers(self.path) if m != LOCKS)}); restore "
                "manifest.json from a backup: nothing was changed"
            )
        if not self.manifest_path.is_file():
            raise AuditError(
                f"{self.path} is not a t2i-audit run (no manifest.json); "
                "create one with `t2i-audit generate ... --out` or a probe command"
            )
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AuditError(
                f"{self.manifest_path} is not valid JSON ({exc}); restore it from a backup: "
                "nothing was changed"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise AuditError(
                f"{self.manifest_path} is unreadable ({reason}); restore it from a backup: "
                "nothing was changed"
            ) from None
        if not isinstance(manifest, dict):
            raise AuditError(f"{self.manifest_path} is not a JSON object; restore it from a backup")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def image_relpath(self, config: str, prompt_id: str, image_index: int) -> str:
        return f"images/{config}/{prompt_id}/{int(image_index)}.png"

    def image_file(self, row: pd.Series | dict[str, Any]) -> Path:
        """Absolute path of an item's PNG."""
        rel = row.get("image_path") or self.image_relpath(
            row["config"], row["prompt_id"], row["image_index"]
        )
        return self.path / rel

    def plan(self) -> pd.DataFrame:
        """The planned items as consolidated on disk (statuses as of the last merge)."""
        if not self.items_path.is_file():
            raise AuditError(f"{self.path} has no items.parquet: nothing was planned here yet")
        return read_parquet(self.items_path)

    def items(self) -> pd.DataFrame:
        """One row per planned image, with the latest status from every shard's parts."""
        items = self.plan()
        for col in ("status", "image_path", "error"):  # one dtype whether or not parts exist
            items[col] = items[col].astype(object)
        parts = read_parts(self, "generate")
        if parts.empty:
            return items
        latest = parts.drop_duplicates("item_id", keep="last").set_index("item_id")
        # one lookup of every item in the parts, shared by the columns (isin on Arrow strings
        # per column cost ~0.1 s per 10k items)
        pos = latest.index.get_indexer(items["item_id"])
        found = pos >= 0
        for col in ("status", "image_path", "error"):
            if col in latest.columns:
                values = latest[col].to_numpy(dtype=object)[pos[found]]
                column = items[col].to_numpy(dtype=object, copy=True)
                column[found] = values
                items[col] = pd.Series(column, index=items.index, dtype=object)
        return items

    def consolidate_items(self, compact: bool = False) -> pd.DataFrame:
        """Write the merged statuses into items.parquet (what `t2i-audit merge` does).

        compact=True also retires the part files now covered by items.parquet, so later reads
        parse only what was added since (safe while other shards still append).
        """
        covered = part_sizes(self, "generate")
        items = self.items()
        atomic_write_parquet(items[ITEM_COLUMNS], self.items_path)
        if compact:
            retire_parts(self, "generate", covered)
        return items
