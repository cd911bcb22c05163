"""What a weights file says about itself: the training recipe it records, and a UNet's hash.

Generation reads these when `--unet` loads a file (provenance, and the check that an ESD file is
loaded over the base it was trained on); the erase stage writes them. Both sides import from
here, so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from analysis.errors import AuditError

RECIPE_KEY = "t2i_audit.esd"  # safetensors metadata key of an ESD file's recipe (JSON)


def read_recipe(path: str | Path) -> dict[str, Any] | None:
    """The ESD recipe recorded in a .safetensors UNet file, or None if it records none."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise AuditError(f"{path} is not a readable .safetensors file: {exc}") from exc
    text = meta.get(RECIPE_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AuditError(f"{path}: its ESD recipe metadata is not JSON ({exc})") from exc
    return record if isinstance(record, dict) else None


def unet_sha256(unet: Any) -> str:
    """sha256 of a UNet's weights (names, dtypes, shapes, bytes): the base model's identity."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        t = tensor.detach().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()
