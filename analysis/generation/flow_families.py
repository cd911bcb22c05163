"""Flow-matching families (SD3, FLUX): recognised from `model_index.json`, checked, loaded.

A diffusers folder says what it is in `model_index.json`'s `_class_name`, as
`AutoPipelineForText2Image` reads it: `StableDiffusion3Pipeline` is `sd3`, `FluxPipeline` is
`flux`. Other pipelines of those families are not text-to-image (FLUX Fill, Redux, Kontext,
Img2Img, Control; SD3 Img2Img, Inpaint) and are refused with one line, as is a folder whose T5
text encoder is missing (the pipelines would silently run with zeros or fail mid-run). Recognising
needs no torch, so a spec can pick its default size without loading weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis.errors import AuditError

FLOW_FAMILIES = ("sd3", "flux")
#: the scheduler predicts the velocity v = eps - x0 (rectified flow); recorded in provenance
FLOW_PREDICTION = "flow"
#: builtin name -> (family, default image side)
FLOW_BUILTINS: dict[str, tuple[str, int]] = {
    "tiny-sd3": ("sd3", 32),
    "sd3-arch": ("sd3", 1024),
    "tiny-flux": ("flux", 32),
    "tiny-flux-dev": ("flux", 32),
    "flux-arch": ("flux", 1024),
}
PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
#: where each family keeps its T5 (SD3: third encoder; FLUX: second)
T5_SLOT = {"sd3": "text_encoder_3", "flux": "text_encoder_2"}
_NOT_T2I = {
    "Fill": "inpainting/outpainting with a mask",
    "Redux": "an image-variation prior",
    "Kontext": "image editing from a reference image",
    "Img2Img": "image-to-image",
    "Inpaint": "inpainting",
    "Control": "control-image conditioning",
}


def _index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}/model_index.json is not readable JSON: {exc}") from exc
    if not isinstance(index, dict):
        raise AuditError(f"{path}/model_index.json is not a JSON object")
    return index


def _is_flow_name(name: str) -> bool:
    return name.startswith(("StableDiffusion3", "Flux"))


def check_flow_folder(path: Path) -> str:
    """The family of an SD3/FLUX diffusers folder; variants and a missing T5 refused, one line."""
    index = _index(path)
    name = str(index.get("_class_name", ""))
    if name not in PIPELINES:
        what = next((why for key, why in _NOT_T2I.items() if key in name), "not text-to-image")
        raise AuditError(
            f"{path} holds a {name} ({what}); only text-to-image StableDiffusion3Pipeline and "
            "FluxPipeline models are supported"
        )
    family = PIPELINES[name]
    slot = T5_SLOT[family]
    entry = index.get(slot) or [None, None]
    if entry[-1] is None or not (path / slot / "config.json").is_file():
        raise AuditError(
            f"{path} has no T5 text encoder ({slot}/ with its config.json); {name} needs it: "
            "copy the model's full snapshot, T5 included"
        )
    if family == "flux":
        try:
            config = json.loads((path / "transformer" / "config.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise AuditError(f"{path}/transformer/config.json is not readable: {exc}") from exc
        channels = config.get("in_channels", 64)
        if channels != 64:
            raise AuditError(
                f"{path}/transformer takes {channels} input channels, a text-to-image FLUX takes "
                "64 (384: FLUX Fill, 128: FLUX Control): pass a FLUX.1 dev or schnell model"
            )
    return family


def _hub_snapshot(model: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # not cached: the SD loader reports it
        return None


def flow_folder(model: str, revision: str | None = None) -> Path | None:
    """The diffusers folder of a --model value if it is an SD3/FLUX-family folder or cached id."""
    path = Path(model).expanduser()
    if path.is_dir():
        folder: Path | None = path
    elif path.exists() or model.startswith((".", "/", "~")) or "/" not in model:
        return None
    else:
        folder = _hub_snapshot(model, revision)
    if folder is None or not (folder / "model_index.json").is_file():
        return None
    try:
        name = str(_index(folder).get("_class_name", ""))
    except AuditError:
        return None
    return folder if _is_flow_name(name) else None


def flow_family(model: str, revision: str | None = None) -> str | None:
    """'sd3' or 'flux' for a builtin or a flow-family folder/cached id; None otherwise.

    A folder of the family that cannot be run (FLUX Fill, no T5) raises its one-line reason.
    """
    if model in FLOW_BUILTINS:
        return FLOW_BUILTINS[model][0]
    folder = flow_folder(model, revision)
    return None if folder is None else check_flow_folder(folder)


def flow_default_size(model: str, revision: str | None = None) -> int | None:
    """The image side the model was trained at, as its pipeline defaults; None if not flow."""
    if model in FLOW_BUILTINS:
        return FLOW_BUILTINS[model][1]
    try:
        family = flow_family(model, revision)
    except AuditError:
        return None
    folder = flow_folder(model, revision)
    if family != "sd3" or folder is None:  # FluxPipeline: default_sample_size 128 x VAE 8
        return 1024 if family else None
    try:  # StableDiffusion3Pipeline: transformer.sample_size x the VAE's factor
        unet = json.loads((folder / "transformer" / "config.json").read_text("utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text("utf-8"))
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return 1024


def _refuse_sd_options(model: str, family: str, options: dict[str, Any]) -> None:
    """Text-encoder swaps, LoRA and SD schedulers are SD-UNet features: refuse, not ignore.
    (`--unet` on a flow model loads transformer tensors: `load_transformer_file`.)"""
    given = [flag for flag, value in options.items() if value]
    if given:
        raise AuditError(
            f"{', '.join(given)} cannot be used with {model} ({family}, a flow-matching "
            "transformer): those options load SD UNet-family weights or schedulers"
        )


def _components(model: str, revision: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if model in FLOW_BUILTINS:
        from analysis.generation.flow_tiny import FLOW_BUILDERS

        family, build = FLOW_BUILDERS[model]
        return family, build(), {"kind": "builtin", "id": model, "weights": "random (seed 0)"}
    folder = flow_folder(model, revision)
    if folder is None:
        raise AuditError(f"{model} is not an SD3 or FLUX model")
    family = check_flow_folder(folder)
    import diffusers

    name = next(k for k, v in PIPELINES.items() if v == family)
    try:
        pipe = getattr(diffusers, name).from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise AuditError(f"could not load {model} as a {name}: {reason}") from exc
    keys = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    keys += ("text_encoder_3", "tokenizer_3", "scheduler") if family == "sd3" else ("scheduler",)
    parts = {k: getattr(pipe, k) for k in keys}
    is_dir = Path(model).expanduser().is_dir()
    prov: dict[str, Any] = (
        {"kind": "folder", "path": str(folder.resolve())}
        if is_dir
        else {"kind": "hub", "id": model, "revision": folder.name, "requested_revision": revision}
    )
    return family, parts, prov


def guidance_rule(family: str, transformer: Any) -> str:
    """How guidance_scale and the guidance configs act on this model (recorded in provenance)."""
    if family == "sd3":
        return "classifier-free guidance on velocity (SLD on eps-equivalents, see velocity.py)"
    if getattr(transformer.config, "guidance_embeds", False):
        return (
            "FLUX dev: guidance_scale is the distilled guidance embedding; configs with an "
            "unconditional or concept branch (negative, SLD) run them as true CFG does "
            "(true_cfg_scale = guidance_scale, same embedding in every branch)"
        )
    return "FLUX schnell: no classifier-free guidance (guidance_scale unused); only `sd` runs"


def load_flow_model(
    model: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    revision: str | None = None,
    **sd_options: Any,
) -> Any:
    """Load an SD3/FLUX model as a LoadedModel (transformer instead of UNet), with provenance."""
    import torch

    from analysis.generation.devices import check_device
    from analysis.generation.models import DTYPES, LoadedModel, _device_name

    if dtype not in DTYPES:
        raise AuditError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    family = flow_family(model, revision) or "?"
    unet = sd_options.pop("--unet", None)  # here: partial transformer files (`erase uce`)
    _refuse_sd_options(model, family, sd_options)
    torch_device = torch.device(check_device(device))
    family, parts, prov = _components(model, revision)
    if unet:
        from pathlib import Path

        from analysis.generation.weight_files import load_transformer_file

        prov["unet"] = load_transformer_file(parts["transformer"], Path(unet))
        prov["unet"]["loaded_over"] = model
    torch_dtype = DTYPES[dtype]
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # a keep-in-float32 cast warning with nothing to keep
    try:
        for key in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            if parts.get(key) is not None:
                parts[key] = parts[key].to(torch_device, dtype=torch_dtype).eval()
                parts[key].requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(level)
    if torch_device.type == "cuda":  # the same determinism settings as the SD fast path
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    sched = parts["scheduler"]
    prov.update(
        spec=model,
        family=family,
        prediction_type=FLOW_PREDICTION,
        transformer=type(parts["transformer"]).__name__,
        guidance=guidance_rule(family, parts["transformer"]),
        scheduler={"class": type(sched).__name__, "config": dict(sched.config)},
        dtype=dtype,
        device=str(torch_device),
        safety_checker="off",
        device_name=_device_name(torch_device),
    )
    return LoadedModel(
        unet=None,
        device=torch_device,
        dtype=torch_dtype,
        provenance=prov,
        family=family,
        **parts,
    )
