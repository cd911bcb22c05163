"""Load the shipped toy model (`--model toy`), checking every file against its recorded sha256.

The weights in analysis/toy/weights/ were written by `t2i-audit toy train`; toy.json beside them
holds the recipe, the training-data rates and each file's sha256, so a damaged or swapped file is
one clear error instead of an audit of unknown weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis.errors import AuditError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
META_FILE = "toy.json"  # written by `t2i-audit toy train` beside the weights


def toy_folder(model: str | Path | None) -> Path | None:
    """The weights folder of 'toy' or of a folder written by `toy train`; None for any other
    model (the one test of "is this the toy model", used by loading, sizing and judging)."""
    if not model:
        return None
    if str(model) == "toy":
        return WEIGHTS_DIR
    folder = Path(model).expanduser()
    return folder if (folder / META_FILE).is_file() else None


def read_meta(folder: Path = WEIGHTS_DIR) -> dict[str, Any]:
    """The toy.json of a toy model folder (recipe, rates, file hashes), or an AuditError."""
    from analysis.toy.train import RECIPE_FILE

    path = folder / RECIPE_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(
            f"toy model metadata {path} is missing: re-install the package or run "
            "`t2i-audit toy train --out DIR` and pass DIR to --model"
        ) from None
    except (OSError, ValueError) as exc:
        raise AuditError(f"toy model metadata {path} is unreadable: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise AuditError(f"toy model metadata {path} has no 'files' table of sha256")
    return meta


def verify(folder: Path = WEIGHTS_DIR) -> dict[str, Any]:
    """toy.json, after checking every file it lists exists with the recorded sha256."""
    from analysis.toy.train import _sha256, folder_sha256

    meta = read_meta(folder)
    for rel, digest in meta["files"].items():
        path = folder / rel
        if not path.is_file():
            raise AuditError(f"toy model file {path} is missing (listed in {folder}/toy.json)")
        if _sha256(path) != digest:
            raise AuditError(
                f"toy model file {path} is corrupt: its sha256 differs from the one recorded "
                "in toy.json; re-install the package or retrain with `t2i-audit toy train`"
            )
    if folder_sha256(meta["files"]) != meta.get("sha256"):
        raise AuditError(f"{folder}/toy.json: its sha256 does not match its file list")
    return meta


def toy_components(folder: Path = WEIGHTS_DIR) -> tuple[dict[str, Any], dict[str, Any]]:
    """(components, provenance) of the verified toy model, in SD 1.x diffusers classes."""
    from diffusers import StableDiffusionPipeline

    from analysis.toy.world import NOTICE

    meta = verify(folder)
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    parts = {k: getattr(pipe, k) for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
    for key in ("unet", "vae", "text_encoder"):
        parts[key].eval().requires_grad_(False)
    shipped = folder.resolve() == WEIGHTS_DIR
    prov = {
        "kind": "builtin" if shipped else "folder",
        "id": "toy" if shipped else None,
        "path": str(folder.resolve()),
        "sha256": meta["sha256"],
        "world_version": meta.get("world_version"),
        "recipe_version": meta.get("recipe_version"),
        "notice": NOTICE,
    }
    return parts, prov
