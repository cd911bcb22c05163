"""Released weight files in their authors' formats: read, convert the key naming, check, load.

Erased models ship as full or partial UNet state dicts (ESD, UCE, SalUn, FMN, CA: diffusers or
CompVis/LDM key naming, .safetensors, .pt or .ckpt), as a text encoder (AdvUnlearn) or as LoRA
adapters (MACE, SPM). Each file is checked against the module it loads into before anything
changes (a key it does not have, a shape of another architecture: one line naming the key and
both shapes), identified by sha256 and described in the provenance (format, key naming, what
was dropped, the base the file records if any), so a result names the exact weights it used.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from analysis.errors import AuditError, require
from analysis.store.hashing import weights_sha256

#: the UNet's keys inside a CompVis/LDM checkpoint (ESD's train-esd.py saves the whole model)
LDM_UNET = "model.diffusion_model."
#: LDM UNet names saved without the model prefix (a UNet-only LDM state dict)
LDM_BARE = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.")
#: the other modules of an LDM checkpoint, dropped from --unet and named in the provenance
LDM_OTHERS = ("first_stage_model.", "cond_stage_model.", "model_ema.", "conditioner.")
#: prefixes a released text encoder's keys may carry (an LDM checkpoint, a pipeline dict,
#: transformers 4's CLIPTextModel), stripped until the key is one of this model's
TEXT_PREFIXES = ("cond_stage_model.transformer.", "text_encoder.", "text_model.")
#: safetensors metadata keys that name the base model a file was made from
BASE_KEYS = ("base_model", "ss_sd_model_name", "ss_base_model_version", "modelspec.architecture")
#: LDM resnet sub-layer names (diffusers name -> LDM name)
_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


# ---- reading -----------------------------------------------------------------------------


def _read(
    path: Path, what: str, label: str, folder_loader: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw tensors of a folder, .safetensors or torch pickle, and how the file holds them."""
    if not path.exists():
        raise AuditError(f"{what} {path} does not exist")
    info: dict[str, Any] = {}
    try:
        if path.is_dir():
            info["format"] = "folder (from_pretrained)"
            return folder_loader(path), info
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            info["format"] = "safetensors"
            base = {k: meta[k] for k in BASE_KEYS if meta.get(k)}
            if base:
                info["base"] = base
            return load_file(str(path)), info
        state = torch.load(path, map_location="cpu", weights_only=True)
    except AuditError:
        raise
    except Exception as exc:  # any reader failure means: not weights we can use
        reason = " ".join(str(exc).split())[:200]
        raise AuditError(f"{what} {path} is not readable {label} weights: {reason}") from exc
    info["format"] = f"torch pickle ({path.suffix or 'no suffix'})"
    if not isinstance(state, dict):
        raise AuditError(f"{what} {path} holds a {type(state).__name__}, not a state dict")
    if isinstance(state.get("state_dict"), dict):  # Lightning/LDM checkpoints (ESD's .ckpt)
        state, info["container"] = state["state_dict"], "state_dict"
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = next(k for k, v in state.items() if not isinstance(v, torch.Tensor))
        raise AuditError(
            f"{what} {path} does not hold a state dict of tensors ({bad!r} is a "
            f"{type(state[bad]).__name__})"
        )
    return state, info


def _dropped(keys: list[str]) -> dict[str, int]:
    """How many keys of each top-level module were left out (shown in the provenance)."""
    return dict(sorted(Counter(k.split(".", 1)[0] for k in keys).items()))


# ---- LDM <-> diffusers UNet names --------------------------------------------------------


def _block_sizes(keys: set[str], kind: str) -> list[tuple[int, bool, bool]]:
    """(resnets, has attentions, has a resampler) of each down or up block, from its keys."""
    sizes = []
    i = 0
    while any(k.startswith(f"{kind}_blocks.{i}.") for k in keys):
        head = f"{kind}_blocks.{i}."
        resnets = {k[len(head) :].split(".")[1] for k in keys if k.startswith(head + "resnets.")}
        sampler = "downsamplers" if kind == "down" else "upsamplers"
        sizes.append(
            (
                len(resnets),
                any(k.startswith(head + "attentions.") for k in keys),
                any(k.startswith(f"{head}{sampler}.") for k in keys),
            )
        )
        i += 1
    return sizes


def _prefix_table(keys: set[str]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet) for every block of this UNet.

    LDM numbers the down path `input_blocks.N` (resnet at .0, attention at .1, the downsampler
    its own block at .0.op), the up path `output_blocks.N` (the upsampler after the attention,
    at .2, or at .1 in a block without one) and the middle `middle_block.0/1/2`; diffusers' own
    converter reads the same layout (tested against it and the ESD authors' converter).
    """
    table = [(d, ldm, False) for d, ldm in _TOP.items()]
    n = 1
    for i, (resnets, attn, sampler) in enumerate(_block_sizes(keys, "down")):
        for j in range(resnets):
            table.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", True))
            if attn:
                table.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.", False))
            n += 1
        if sampler:
            table.append(
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{n}.0.op.", False)
            )
            n += 1
    table += [
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    n = 0
    for i, (resnets, attn, sampler) in enumerate(_block_sizes(keys, "up")):
        for j in range(resnets):
            table.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", True))
            if attn:
                table.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.", False))
            if sampler and j == resnets - 1:
                at = 2 if attn else 1
                table.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n}.{at}.", False))
            n += 1
    return table


def ldm_unet_names(unet_keys: list[str] | set[str]) -> dict[str, str]:
    """{LDM name: diffusers name} for every key of a diffusers UNet (works for partial files).

    diffusers' `convert_ldm_unet_checkpoint` counts blocks from the keys it is given, so a
    partial file (ESD-x: only cross-attention to_k/to_v) loses some of its tensors silently;
    this table maps each key on its own.
    """
    keys = set(unet_keys)
    table = sorted(_prefix_table(keys), key=lambda row: -len(row[0]))  # longest prefix first
    names: dict[str, str] = {}
    for key in keys:
        for diffusers, ldm, resnet in table:
            if key.startswith(diffusers):
                rest = key[len(diffusers) :]
                if resnet:
                    head, _, tail = rest.partition(".")
                    rest = f"{dict(_RESNET).get(head, head)}.{tail}"
                names[ldm + rest] = key
                break
    return names


def _unet_keys(state: dict[str, Any], path: Path, unet: Any) -> tuple[dict[str, Any], dict]:
    """The UNet's tensors of `state` under diffusers names, and how they were named."""
    info: dict[str, Any] = {}
    if any(k.startswith(LDM_UNET) for k in state):
        others = [k for k in state if not k.startswith(LDM_UNET)]
        state = {k[len(LDM_UNET) :]: v for k, v in state.items() if k.startswith(LDM_UNET)}
        if others:  # a full LDM checkpoint: VAE, text encoder, EMA, schedule buffers
            info["dropped"] = _dropped(others)
            info["note"] = (
                "a full LDM checkpoint: only its model.diffusion_model.* (UNet) keys load"
            )
    elif state and all(k.startswith(LDM_OTHERS) for k in state):
        raise AuditError(
            f"--unet {path} holds no UNet keys ({LDM_UNET}*): only "
            f"{', '.join(_dropped(list(state)))}"
        )
    elif not any(k.startswith(LDM_BARE) for k in state):
        info["key_naming"] = "diffusers"
        return state, info
    info["key_naming"] = "CompVis/LDM"
    names = ldm_unet_names(unet.state_dict().keys())
    return {names.get(k, k): v for k, v in state.items()}, info  # unknown keys named below


def _text_keys(state: dict[str, Any], path: Path, target: set[str]) -> tuple[dict, dict]:
    """A text encoder's tensors under this model's names (prefixes of other savers stripped)."""
    info: dict[str, Any] = {"key_naming": "transformers"}
    if any(k.startswith("cond_stage_model.model.") for k in state):
        raise AuditError(
            f"--text-encoder {path} holds an OpenCLIP-named text encoder (SD 2 LDM "
            "cond_stage_model.model.*), which cannot be loaded faithfully here: convert it to a "
            "transformers CLIPTextModel folder first"
        )
    if any(k.startswith(LDM_UNET) for k in state):  # a full LDM checkpoint
        keep = "cond_stage_model.transformer."
        others = [k for k in state if not k.startswith(keep)]
        state = {k: v for k, v in state.items() if k.startswith(keep)}
        info["dropped"] = _dropped(others)
        info["key_naming"] = "CompVis/LDM"
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        name = key
        for prefix in TEXT_PREFIXES:
            if name not in target and name.startswith(prefix):
                name = name[len(prefix) :]
        if name not in target and f"text_model.{name}" in target:
            name = f"text_model.{name}"
        out[name if name in target else key] = tensor
    stale = [k for k in out if k.endswith("position_ids") and k not in target]
    for key in stale:  # a buffer transformers 4 saved; transformers 5 rebuilds it
        del out[key]
    if stale:
        info["dropped_buffers"] = stale
    return out, info


# ---- checking and loading ----------------------------------------------------------------


def check_state(what: str, path: Path, state: dict[str, Any], module: Any, label: str) -> None:
    """Refuse tensors that would load without changing the model, or change it wrongly.

    A released file may hold only some keys (strict=False), so an empty file, or one whose keys
    all miss, would audit the base model under the file's name; load_state_dict casts int8 or
    bool tensors to float silently, NaN weights sample noise; a file of another architecture
    is named by its first tensor whose shape differs, else its first key this model lacks.
    """
    if not state:
        raise AuditError(f"{what} {path} holds no tensors; it would leave the base {label} as is")
    target = module.state_dict()
    if not set(state) & set(target):
        raise AuditError(
            f"{what} {path}: none of its {len(state)} tensors is a key of this model's {label} "
            f"(e.g. {next(iter(state))!r})"
        )
    for name, tensor in state.items():
        if not tensor.dtype.is_floating_point:
            raise AuditError(
                f"{what} {path}: tensor {name!r} is {tensor.dtype}, not floating-point weights"
            )
        if not torch.isfinite(tensor).all():  # e.g. a diverged training run's output
            raise AuditError(f"{what} {path}: tensor {name!r} holds NaN or infinite values")
    for name, tensor in state.items():
        if name in target and tuple(tensor.shape) != tuple(target[name].shape):
            raise AuditError(
                f"{what} {path} is for another architecture: tensor {name!r} is "
                f"{tuple(tensor.shape)} there, {tuple(target[name].shape)} in this model's {label}"
            )
    extra = [k for k in state if k not in target]
    if extra:
        raise AuditError(
            f"{what} {path} does not fit this model's {label}: tensor {extra[0]!r} is not one of "
            f"its keys ({len(extra)} of the file's {len(state)} tensors are not)"
        )


def _load(what: str, path: Path, state: dict[str, Any], module: Any, label: str) -> dict:
    check_state(what, path, state, module, label)
    module.load_state_dict(state, strict=False)  # shapes and keys checked above
    total = len(module.state_dict())
    return {
        "tensors": len(state),
        "coverage": "full" if len(state) == total else f"partial ({len(state)} of {total})",
    }


def load_unet_file(unet: Any, path: Path) -> dict[str, Any]:
    """Load UNet weights (ESD, UCE, SalUn, FMN, CA...) into `unet`; returns their provenance."""
    from diffusers import UNet2DConditionModel

    from analysis.store.weights import read_recipe, unet_sha256

    def folder(p: Path) -> dict[str, Any]:
        sub = p / "unet" if (p / "unet" / "config.json").is_file() else p
        return UNet2DConditionModel.from_pretrained(sub, local_files_only=True).state_dict()

    raw, info = _read(path, "--unet", "UNet", folder)
    digest = weights_sha256(path, "--unet")
    recipe = read_recipe(path)  # an ESD file of ours records its training recipe and base
    base = (recipe or {}).get("base_unet_sha256")
    if base and unet_sha256(unet) != base:
        raise AuditError(
            f"--unet {path} was trained (ESD) on another base UNet than this model's "
            f"(recorded base {recipe.get('base_model_source') or '?'}); load it over that base"
        )
    state, naming = _unet_keys(raw, path, unet)
    result = {"path": str(path.resolve()), "sha256": digest, **info, **naming}
    result.update(_load("--unet", path, state, unet, "UNet"))
    if recipe is not None:
        result["esd"] = recipe  # the training recipe, shown in the run's provenance
        result.setdefault("base", {"base_model_source": recipe.get("base_model_source")})
    return result


def load_transformer_file(transformer: Any, path: Path) -> dict[str, Any]:
    """Load transformer tensors (our `erase uce` FLUX files, a full diffusers transformer) over
    an SD3/FLUX model's transformer, checked as --unet files are; returns their provenance.

    A file that records its base (ours do) must be loaded over that base: an SD UNet file on a
    flow model, or one edited from another FLUX, is refused naming the recorded base.
    """
    from analysis.store.weights import read_recipe, unet_sha256

    def folder(p: Path) -> dict[str, Any]:
        sub = p / "transformer" if (p / "transformer" / "config.json").is_file() else p
        return type(transformer).from_pretrained(sub, local_files_only=True).state_dict()

    raw, info = _read(path, "--unet", "transformer", folder)
    digest = weights_sha256(path, "--unet")
    recipe = read_recipe(path) or {}
    base = recipe.get("base_transformer_sha256") or recipe.get("base_unet_sha256")
    if base and unet_sha256(transformer) != base:
        made_on = recipe.get("base_model") or recipe.get("base_model_source") or "?"
        raise AuditError(
            f"--unet {path} was made ({str(recipe.get('method_family') or 'esd').upper()}) from "
            f"another base model ({made_on!s:.80}) than this {type(transformer).__name__}; load "
            "it over that base"
        )
    result = {"path": str(path.resolve()), "sha256": digest, **info}
    result.update(_load("--unet", path, raw, transformer, "transformer"))
    if recipe:
        result["esd"] = recipe  # the recipe, shown in the run's provenance (key as for UNets)
    return result


def load_text_encoder_file(text_encoder: Any, path: Path) -> dict[str, Any]:
    """Load a text encoder (AdvUnlearn) over the model's first text encoder; its provenance."""

    def folder(p: Path) -> dict[str, Any]:
        from transformers import CLIPTextModel

        sub = p / "text_encoder" if (p / "text_encoder" / "config.json").is_file() else p
        return CLIPTextModel.from_pretrained(sub, local_files_only=True).state_dict()

    raw, info = _read(path, "--text-encoder", "text encoder", folder)
    digest = weights_sha256(path, "--text-encoder")
    state, naming = _text_keys(raw, path, set(text_encoder.state_dict()))
    result = {"path": str(path.resolve()), "sha256": digest, **info, **naming}
    result.update(_load("--text-encoder", path, state, text_encoder, "text encoder"))
    return result


# ---- LoRA ----------------------------------------------------------------------------------

_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


@contextmanager
def _quiet_diffusers() -> Any:
    """diffusers and peft log what we turn into one error line (or check ourselves)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _adapted(module: Any) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


def _lora_modules(state: dict[str, Any]) -> Counter[str]:
    """How many modules of each component a (diffusers-format) LoRA state dict adapts."""
    found: set[str] = set()
    for key in state:
        match = re.match(r"(.+?)\.(lora_A|lora\.down|lora_down|lora_linear_layer\.down)\b", key)
        if match:
            found.add(match.group(1))
    return Counter(name.split(".", 1)[0] for name in found)


def fuse_lora_file(components: dict[str, Any], family: str, path: Path, scale: float) -> dict:
    """Fuse a diffusers/peft LoRA (MACE, SPM) into the UNet and text encoder at `scale`.

    diffusers reads the file (its own, peft's and kohya's key formats), peft injects the
    adapters, and `fuse_lora` writes W + scale * (alpha / r) * B @ A into each weight; the
    adapters are then removed, so sampling runs the plain modules. A LoRA for another base
    (a shape that differs, a module this model lacks, a file that adapts nothing) is refused.
    """
    require("peft", "lora", "--lora (LoRA adapters)")
    if not path.exists():
        raise AuditError(f"--lora {path} does not exist")
    import diffusers

    from analysis.generation.families import pipeline_name

    digest = weights_sha256(path, "--lora")
    cls = getattr(diffusers, pipeline_name(family))
    parts = (
        ("unet", "text_encoder", "text_encoder_2") if family == "sdxl" else ("unet", "text_encoder")
    )
    pipe = cls(**_pipe_parts(components, family))
    with _quiet_diffusers():
        try:
            state = cls.lora_state_dict(str(path))
            state = state[0] if isinstance(state, tuple) else state
            wanted = _lora_modules(state)
            pipe.load_lora_weights(str(path), adapter_name="audit")
        except Exception as exc:
            raise _lora_error(path, exc) from exc
        adapted = {p: len(_adapted(getattr(pipe, p))) for p in parts if getattr(pipe, p, None)}
        done = sum(adapted.values())
        if not done:
            pipe.unload_lora_weights()
            raise AuditError(
                f"--lora {path} adapts none of this model's modules: a LoRA for another base "
                f"(its keys: {', '.join(sorted(wanted)) or 'none recognised'})"
            )
        missing = {p: n - adapted.get(p, 0) for p, n in wanted.items() if n > adapted.get(p, 0)}
        if missing:
            pipe.unload_lora_weights()
            raise AuditError(
                f"--lora {path} does not fit this model: "
                + ", ".join(
                    f"{n} of its {p} modules are not in this model" for p, n in missing.items()
                )
            )
        pipe.fuse_lora(components=[p for p in adapted if adapted[p]], lora_scale=scale)
        pipe.unload_lora_weights()
    for p in parts:
        if getattr(pipe, p, None) is not None:
            components[p] = getattr(pipe, p)
    info: dict[str, Any] = {
        "path": str(path.resolve()),
        "sha256": digest,
        "format": "diffusers/peft LoRA (load_lora_weights)",
        "scale": scale,
        "modules": {p: n for p, n in adapted.items() if n},
    }
    meta = _lora_metadata(path)
    if meta:
        info["base"] = meta
    return info


def _pipe_parts(components: dict[str, Any], family: str) -> dict[str, Any]:
    names = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    if family == "sdxl":
        return {n: components[n] for n in [*names, "text_encoder_2", "tokenizer_2"]}
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return {**{n: components[n] for n in names}, **extra}


def _lora_metadata(path: Path) -> dict[str, str]:
    file = path if path.is_file() else next(iter(sorted(path.glob("*.safetensors"))), None)
    if file is None or file.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {k: meta[k] for k in BASE_KEYS if meta.get(k)}


def _lora_error(path: Path, exc: Exception) -> AuditError:
    text = " ".join(str(exc).split())
    match = _MISMATCH.search(str(exc))
    if match:
        key, there, here = match.groups()
        key = re.sub(r"\.audit\.", ".", key)
        return AuditError(
            f"--lora {path} is for another base: tensor {key!r} is ({there}) there, ({here}) "
            "for this model"
        )
    if "not found in the base model" in text:
        return AuditError(f"--lora {path} is for another base: {text[:200]}")
    return AuditError(f"--lora {path} cannot be loaded faithfully as a LoRA: {text[:200]}")
