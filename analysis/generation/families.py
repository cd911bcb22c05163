"""Which Stable Diffusion family a model is, read from its configuration, and what follows.

Families differ as data, not as another sampling loop: `sd1` and `sd2` use diffusers'
StableDiffusionPipeline (SD 2.x with an OpenCLIP text encoder, often v-prediction); `sdxl` uses
StableDiffusionXLPipeline (two text encoders, pooled embeddings, added time ids). This module
needs no torch, so a spec can pick its default image size without loading weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from analysis.errors import AuditError

FAMILIES = ("sd1", "sd2", "sdxl")
#: built-in random-weight models: name -> (family, prediction type)
BUILTIN_FAMILIES: dict[str, tuple[str, str]] = {
    "tiny": ("sd1", "epsilon"),
    "sd1-arch": ("sd1", "epsilon"),
    "tiny-sd2": ("sd2", "v_prediction"),
    "sd2-arch": ("sd2", "v_prediction"),
    "tiny-sdxl": ("sdxl", "epsilon"),
    "sdxl-arch": ("sdxl", "epsilon"),
}
REFINER = (
    "is an SDXL refiner (image-to-image, one text encoder, aesthetic-score conditioning); only "
    "text-to-image base models are supported: pass the SDXL base model"
)


def default_size(family: str, prediction_type: str = "epsilon") -> int:
    """The image side each family was trained at: 512 (SD 1.x, SD 2 base), 768 (SD 2 v), 1024."""
    if family == "sdxl":
        return 1024
    if family == "sd2" and prediction_type == "v_prediction":
        return 768
    return 512


def pipeline_name(family: str) -> str:
    """diffusers' reference text-to-image pipeline for a family (the oracle of our sampler)."""
    return "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"


def family_of(components: dict[str, Any]) -> str:
    """`sdxl` with a second text encoder; `sd2` for an OpenCLIP text encoder (gelu); else `sd1`.

    SD 1.x uses OpenAI's CLIP ViT-L/14 (quick_gelu activations), SD 2.x OpenCLIP ViT-H (gelu).
    """
    if components.get("text_encoder_2") is not None:
        if components.get("text_encoder") is None:
            raise AuditError(f"this model {REFINER}")
        return "sdxl"
    act = getattr(components["text_encoder"].config, "hidden_act", "quick_gelu")
    return "sd2" if act == "gelu" else "sd1"


def folder_pipeline(path: Path) -> str:
    """The pipeline to load a diffusers folder with, from its model_index.json; refiners refused."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}/model_index.json is not readable JSON: {exc}") from exc
    name = str(index.get("_class_name", ""))
    has_te2 = (index.get("text_encoder_2") or [None])[0] is not None
    has_te1 = (index.get("text_encoder") or [None])[0] is not None
    if "XL" in name or has_te2:
        if "Img2Img" in name or not has_te1 or index.get("requires_aesthetics_score"):
            raise AuditError(f"{path} {REFINER}")
        return "StableDiffusionXLPipeline"
    if "Img2Img" in name or "Inpaint" in name or "Upscale" in name:
        raise AuditError(f"{path} holds a {name}; only text-to-image Stable Diffusion is supported")
    return "StableDiffusionPipeline"


def _checkpoint_keys(path: Path) -> dict[str, Any]:
    """Tensor names and shapes of a checkpoint (a .safetensors header only; a .ckpt mmapped)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # the header only: no tensor is read
            return {k: SimpleNamespace(shape=tuple(f.get_slice(k).get_shape())) for k in names}
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return dict(state)


def single_file_family(path: Path) -> str:
    """`sd1`, `sd2` or `sdxl` for an original-format checkpoint (diffusers' own key test)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        kind = infer_diffusers_model_type(_checkpoint_keys(path))
    except Exception as exc:  # unreadable: let the loader report it with its own message
        raise AuditError(f"could not read the checkpoint {path}: {exc}") from exc
    if kind == "xl_refiner":
        raise AuditError(f"{path} {REFINER}")
    families = {"v1": "sd1", "v2": "sd2", "xl_base": "sdxl"}
    if kind not in families:
        raise AuditError(
            f"{path} is a {kind!r} checkpoint (diffusers' detection); only text-to-image "
            "SD 1.x, SD 2.x and SDXL base checkpoints are supported"
        )
    return families[kind]


def _scheduler_prediction(folder: Path) -> str:
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return "epsilon"
    return str(config.get("prediction_type", "epsilon"))


def _folder_family(folder: Path) -> tuple[str, str]:
    pipeline = folder_pipeline(folder)
    prediction = _scheduler_prediction(folder)
    if pipeline == "StableDiffusionXLPipeline":
        return "sdxl", prediction
    try:
        text = json.loads((folder / "text_encoder" / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return "sd1", prediction
    return ("sd2" if text.get("hidden_act") == "gelu" else "sd1"), prediction


def _hub_snapshot(model_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:  # not cached: the loader will say so
        return None


def guess_family(model: str, revision: str | None = None) -> tuple[str, str] | None:
    """(family, prediction type) of a --model value without loading weights; None if unknown.

    A single file's prediction type is not in the file: diffusers assumes SD 2.x checkpoints
    are v-prediction (stable-diffusion-2-1), and so does this guess.
    """
    if model in BUILTIN_FAMILIES:
        return BUILTIN_FAMILIES[model]
    path = Path(model).expanduser()
    try:
        if path.is_dir() and (path / "model_index.json").is_file():
            return _folder_family(path)
        if path.is_file():
            family = single_file_family(path)
            return family, "v_prediction" if family == "sd2" else "epsilon"
    except AuditError:
        return None
    if path.exists() or model.startswith((".", "/", "~")):
        return None
    snapshot = _hub_snapshot(model, revision)
    if snapshot is None or not (snapshot / "model_index.json").is_file():
        return None
    try:
        return _folder_family(snapshot)
    except AuditError:
        return None


def default_size_for(model: str, revision: str | None = None) -> int:
    """The default image side for a --model value (512 when the family cannot be told yet).

    A model trained at its own size (the toy model) says so in its configs, as diffusers'
    pipelines read it: unet.config.sample_size * the VAE's scale factor.
    """
    trained = _trained_size(model)
    if trained is not None:
        return trained
    from analysis.generation.flow_families import flow_default_size

    flow = flow_default_size(model, revision)  # SD3, FLUX: 1024; their tiny builtins 32
    if flow is not None:
        return flow
    guess = guess_family(model, revision)
    return default_size(*guess) if guess else 512


def _trained_size(model: str) -> int | None:
    """unet sample_size x VAE factor for the toy model (built-in or a `toy train` folder)."""
    import json

    from analysis.toy.model import toy_folder

    folder = toy_folder(model)
    if folder is None:
        return None
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None
