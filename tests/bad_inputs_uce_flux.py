"""Bad input to UCE on flow models and to `--unet` on SD3/FLUX: SD3 (no authors' edit), ESD and
RECE on a flow model, a blank concept, a FLUX Fill folder, and transformer files that do not fit
(an SD UNet file, FLUX Fill's 384-channel input, another base, NaN, integers, a missing file)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from badinput import GEN, Case, _write
from safetensors.torch import save

from analysis.store.weights import RECIPE_KEY

OUT = ["--out", "{tmp}/new/u.safetensors"]
UCE = ["erase", "uce", "--concept", "magenta", *OUT]
FLUX = [*GEN, "--model", "tiny-flux", "--prompt", "a tree", "--unet", "{tmp}/t.safetensors"]


def _file(tensors: dict[str, torch.Tensor], **recipe: object) -> bytes:
    meta = {"format": "pt"}
    if recipe:
        meta[RECIPE_KEY] = json.dumps(recipe)
    return save(tensors, metadata=meta)


def _fill_folder(tmp: Path, run: Path) -> None:
    """A FLUX Fill snapshot's model_index.json (the rest is never read)."""
    folder = tmp / "fill"
    folder.mkdir()
    index = {"_class_name": "FluxFillPipeline", "text_encoder_2": ["transformers", "T5"]}
    (folder / "model_index.json").write_text(json.dumps(index))


ATTN2 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"

CASES = [
    Case("uce-flux-sd3-refused", [*UCE, "--model", "tiny-sd3"], "not SD3", new_out=True),
    Case(
        "uce-flux-blank-concept",
        ["erase", "uce", "--model", "tiny-flux", "--concept", " ", *OUT],
        "concept to erase is blank",
        new_out=True,
    ),
    Case(
        "uce-flux-fill-model",
        [*UCE, "--model", "{tmp}/fill"],
        "FluxFillPipeline (inpainting",
        _fill_folder,
        new_out=True,
    ),
    Case(
        "uce-flux-rece-on-flux",
        ["erase", "rece", "--model", "tiny-flux", "--concept", "x", *OUT],
        "RECE here edits SD 1.x/2.x UNets",
        new_out=True,
    ),
    Case(
        "uce-flux-esd-on-sd3",
        ["erase", "esd", "--model", "tiny-sd3", "--concept", "x", *OUT],
        "ESD here edits SD 1.x/2.x UNets",
        new_out=True,
    ),
    Case(
        "uce-flux-sd-uce-file-on-flux",
        FLUX,
        "made (UCE) from another base model",
        _write(
            "t.safetensors",
            _file({ATTN2: torch.zeros(32, 32)}, method_family="uce", base_unet_sha256="0" * 64),
        ),
        new_out=True,
    ),
    Case(
        "uce-flux-sd-unet-keys-on-flux",
        FLUX,
        "none of its 1 tensors is a key of this model's transformer",
        _write("t.safetensors", _file({ATTN2: torch.zeros(32, 32)})),
        new_out=True,
    ),
    Case(
        "uce-flux-fill-transformer-file",
        FLUX,
        "tensor 'x_embedder.weight' is (32, 384) there, (32, 64)",
        _write("t.safetensors", _file({"x_embedder.weight": torch.zeros(32, 384)})),
        new_out=True,
    ),
    Case(
        "uce-flux-file-of-another-flux",
        FLUX,
        "from another base model (tiny-flux-dev)",
        _write(
            "t.safetensors",
            _file(
                {"context_embedder.weight": torch.zeros(32, 64)},
                method_family="uce",
                base_model="tiny-flux-dev",
                base_transformer_sha256="0" * 64,
            ),
        ),
        new_out=True,
    ),
    Case(
        "uce-flux-file-nan",
        FLUX,
        "'context_embedder.weight' holds NaN",
        _write(
            "t.safetensors", _file({"context_embedder.weight": torch.full((32, 64), torch.nan)})
        ),
        new_out=True,
    ),
    Case(
        "uce-flux-file-integers",
        FLUX,
        "is torch.int64, not floating-point",
        _write(
            "t.safetensors",
            _file({"context_embedder.weight": torch.zeros(32, 64, dtype=torch.long)}),
        ),
        new_out=True,
    ),
    Case("uce-flux-file-missing", FLUX, "t.safetensors", new_out=True),
]
