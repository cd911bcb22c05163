"""Load a model to audit: a hub id, a local folder, a single checkpoint file, or a built-in one.

Whatever is loaded, `provenance` records exactly what it was (hub commit, file sha256, scheduler)
so a result can be traced to its weights. Nothing is downloaded while HF_HUB_OFFLINE is set (the
default in this project's Makefile); a missing model is one clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from analysis.errors import AuditError
from analysis.generation.devices import check_device
from analysis.store.hashing import sha256_file

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BUILTIN = ("tiny", "sd1-arch", "tiny-sd2", "sd2-arch", "tiny-sdxl", "sdxl-arch", "toy")
#: the modules a loaded model carries (SDXL adds the second text encoder and tokenizer)
MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")


@dataclass
class LoadedModel:
    """The components our sampler uses, on one device and dtype, plus where they came from.

    `family` ('sd1', 'sd2', 'sdxl', see `families`) decides how texts condition the UNet.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    provenance: dict[str, Any] = field(default_factory=dict)
    family: str = "sd1"
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = False
    #: flow-matching families (sd3, flux; see flow_families): the denoiser and SD3's T5
    transformer: Any = None
    text_encoder_3: Any = None
    tokenizer_3: Any = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        if self.transformer is not None:  # SD3, FLUX: velocity (flow_families.FLOW_PREDICTION)
            return "flow"
        return str(getattr(self.scheduler.config, "prediction_type", "epsilon"))

    def components(self) -> dict[str, Any]:
        """Keyword arguments for a diffusers pipeline on the same modules (tests, benchmarks)."""
        parts = {
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "scheduler": self.scheduler,
        }
        if self.family == "sdxl":
            parts.update(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
        return parts


def _offline() -> bool:
    from analysis.hub import downloads_allowed

    return not downloads_allowed()


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _from_builtin(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if name == "toy":  # trained weights shipped in the package (analysis/toy/weights)
        from analysis.toy.model import toy_components

        return toy_components()
    from analysis.generation.tiny import BUILDERS

    return BUILDERS[name](), {"kind": "builtin", "id": name, "weights": "random (seed 0)"}


def _pipeline_class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _from_folder(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from analysis.generation.families import folder_pipeline
    from analysis.toy.model import toy_components, toy_folder

    if toy_folder(path) is not None:  # written by `toy train`: verify every file's sha256
        return toy_components(path)
    if not (path / "model_index.json").is_file():
        raise AuditError(
            f"{path} is not a diffusers model folder (no model_index.json); expected the layout "
            "written by `pipeline.save_pretrained(...)` or a snapshot from the Hugging Face hub"
        )
    name = folder_pipeline(path)
    pipe = _pipeline_class(name).from_pretrained(path, local_files_only=True, **_no_checker(name))
    return _pipe_components(pipe), {"kind": "folder", "path": str(path.resolve())}


def _no_checker(pipeline: str) -> dict[str, Any]:
    """SD pipelines take a safety checker (we load none); the SDXL pipeline has none."""
    return {} if "XL" in pipeline else {"safety_checker": None}


def _from_single_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from analysis.generation.families import pipeline_name, single_file_family

    name = pipeline_name(single_file_family(path))
    try:
        pipe = _pipeline_class(name).from_single_file(
            str(path), local_files_only=_offline(), **_no_checker(name)
        )
    except Exception as exc:
        raise AuditError(
            f"could not load the checkpoint {path}: {exc}. Single-file loading needs the base "
            "model's configuration: have it in the Hugging Face cache "
            f"({_hub_cache()}) or convert the file to a diffusers folder on a machine with network"
        ) from exc
    return _pipe_components(pipe), {
        "kind": "single_file",
        "path": str(path.resolve()),
        "sha256": sha256_file(path),
    }


def _from_hub(model_id: str, revision: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    from huggingface_hub import snapshot_download

    from analysis.generation.families import folder_pipeline

    try:
        snapshot = snapshot_download(model_id, revision=revision, local_files_only=_offline())
        name = folder_pipeline(Path(snapshot))
        pipe = _pipeline_class(name).from_pretrained(
            snapshot, local_files_only=True, **_no_checker(name)
        )
    except AuditError:
        raise
    except Exception as exc:
        looked = f"the Hugging Face cache ({_hub_cache()})"
        how = (
            f"download it on a machine with network (`huggingface-cli download {model_id}`) and "
            "copy the cache here, or pass a local diffusers folder / .safetensors file to --model"
        )
        if _offline():
            from analysis.hub import OPT_IN

            how += f", or {OPT_IN}"
        else:
            how += ", or check the id and your network/login"
        reason = " ".join(str(exc).split())[:160]
        raise AuditError(
            f"model {model_id!r} is not available: looked in {looked}"
            f"{' (offline by default)' if _offline() else ''}; {how}. ({reason})"
        ) from exc
    return _pipe_components(pipe), {
        "kind": "hub",
        "id": model_id,
        "revision": Path(snapshot).name,
        "requested_revision": revision,
    }


def _pipe_components(pipe: Any) -> dict[str, Any]:
    parts = {k: getattr(pipe, k, None) for k in PARTS}
    if parts["text_encoder_2"] is None:
        del parts["text_encoder_2"], parts["tokenizer_2"]
    else:
        parts["force_zeros_for_empty_prompt"] = bool(
            pipe.config.get("force_zeros_for_empty_prompt", True)
        )
    return parts


def _swap_unet(unet: Any, path: Path) -> dict[str, Any]:
    """Load UNet weights from a file or folder into `unet` (concept-erased models: ESD, UCE)."""
    from analysis.generation.weight_files import load_unet_file

    return load_unet_file(unet, path)


def _set_scheduler(components: dict[str, Any], name: str) -> None:
    """Swap in a scheduler by name: only those diffusers declares interchangeable for SD."""
    from analysis.generation.schedulers import scheduler_class

    components["scheduler"] = scheduler_class(name).from_config(components["scheduler"].config)


def _sd_scheduler_fixups(scheduler: Any) -> tuple[Any, dict[str, Any]]:
    """Apply the config fixes diffusers' SD pipelines apply on construction, and report them.

    StableDiffusionPipeline forces steps_offset=1 and clip_sample=False; without them a
    scheduler swapped in by name (e.g. DDPM) would not sample as the reference does.
    """
    fixes: dict[str, Any] = {}
    if getattr(scheduler.config, "steps_offset", 1) != 1:
        fixes["steps_offset"] = 1
    if getattr(scheduler.config, "clip_sample", False) is True:
        fixes["clip_sample"] = False
    if fixes:
        scheduler = type(scheduler).from_config(scheduler.config, **fixes)
    return scheduler, fixes


def _vae_upcast(components: dict[str, Any], family: str, dtype: torch.dtype) -> dict[str, Any]:
    """SDXL's VAE overflows in float16 (`force_upcast`): keep it in float32, as diffusers does."""
    vae = components["vae"]
    if family == "sdxl" and dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        components["vae"] = vae.to(torch.float32)
        return {"vae_dtype": "float32"}
    return {}


def _device_name(device: torch.device) -> str:
    """The hardware, recorded: the same B and dtype on another GPU model may differ in bits."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{device.type} ({platform.processor() or platform.machine()})"


def _gpu_fast_path(components: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """GPU-only preparation that does not change what an image is, recorded in provenance.

    channels_last UNet memory layout and SDPA attention (diffusers' default) for throughput;
    cuDNN autotuning off and deterministic cuDNN kernels on, so a batch computes the same bits
    every time on one device (fixed-shape batching relies on that). Noise stays on the CPU.
    """
    if device.type != "cuda":
        return {}
    components["unet"] = components["unet"].to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {
        "fast_path": {
            "unet_memory_format": "channels_last",
            "cudnn_benchmark": False,
            "cudnn_deterministic": True,
            "tf32": False,
        }
    }


def load_model(
    model: str,
    *,
    unet: str | None = None,
    text_encoder: str | None = None,
    lora: str | None = None,
    lora_scale: float = 1.0,
    device: str = "cpu",
    dtype: str = "float32",
    revision: str | None = None,
    scheduler: str | None = None,
) -> LoadedModel:
    """Load `model` (a builtin, hub id, diffusers folder, or .safetensors/.ckpt file).

    The family (SD 1.x, 2.x or XL) is read from the loaded components and recorded with the
    prediction type in the provenance. `unet`, `text_encoder` (released erased weights) and
    `lora` (fused at `lora_scale`) load over it, each recorded with its sha256 and format.
    """
    if dtype not in DTYPES:
        raise AuditError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from analysis.generation.flow_families import flow_family, load_flow_model

    if flow_family(model, revision):  # SD3 / FLUX: a transformer, its own loader and sampler
        sd_only = {"--unet": unet, "--text-encoder": text_encoder, "--lora": lora}
        sd_only["--scheduler"] = scheduler
        return load_flow_model(model, device=device, dtype=dtype, revision=revision, **sd_only)
    torch_device = torch.device(check_device(device))
    path = Path(model)
    if model in BUILTIN:
        components, prov = _from_builtin(model)
    elif path.is_file():
        components, prov = _from_single_file(path)
    elif path.is_dir():
        components, prov = _from_folder(path)
    elif model.startswith((".", "/", "~")) or model.endswith((".safetensors", ".ckpt")):
        raise AuditError(f"model path {model} does not exist")
    else:
        components, prov = _from_hub(model, revision)
    if unet:
        prov["unet"] = _swap_unet(components["unet"], Path(unet))
    if text_encoder:
        from analysis.generation.weight_files import load_text_encoder_file

        prov["text_encoder"] = load_text_encoder_file(
            components["text_encoder"], Path(text_encoder)
        )
    if scheduler:
        _set_scheduler(components, scheduler)
    from analysis.generation.families import family_of

    family = components["family"] = family_of(components)
    if lora:
        from analysis.generation.weight_files import fuse_lora_file

        prov["lora"] = fuse_lora_file(components, family, Path(lora), lora_scale)
    for part in ("unet", "text_encoder", "lora"):
        if part in prov:
            prov[part]["loaded_over"] = model
    if family != "sdxl":  # StableDiffusionPipeline's fixups; the SDXL pipeline applies none
        components["scheduler"], fixes = _sd_scheduler_fixups(components["scheduler"])
        if fixes:
            prov["scheduler_fixups"] = fixes
    torch_dtype = DTYPES[dtype]
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # a cast warning that does not apply to SD 1.x
    try:
        for key in MODULES:
            if components.get(key) is not None:
                components[key] = components[key].to(torch_device, dtype=torch_dtype).eval()
                components[key].requires_grad_(False)
        prov.update(_vae_upcast(components, family, torch_dtype))
    finally:
        diffusers_logging.set_verbosity(level)
    fast_path = _gpu_fast_path(components, torch_device)
    sched = components["scheduler"]
    if family == "sdxl":
        prov["force_zeros_for_empty_prompt"] = components["force_zeros_for_empty_prompt"]
    prov.update(
        spec=model,
        family=family,
        prediction_type=str(getattr(sched.config, "prediction_type", "epsilon")),
        scheduler={"class": type(sched).__name__, "config": dict(sched.config)},
        dtype=dtype,
        device=str(torch_device),
        safety_checker="off",
        attention="torch SDPA (diffusers AttnProcessor2_0)",
        device_name=_device_name(torch_device),
        **fast_path,
    )
    return LoadedModel(**components, device=torch_device, dtype=torch_dtype, provenance=prov)
