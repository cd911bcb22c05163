"""Bad inputs of SD3/FLUX generation: non-text-to-image checkpoints, a missing T5, configs that
cannot act on a family, sizes off the family's grid. One named line each, nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from badinput import GEN, Case

ONE = [*GEN, "--prompt", "a body"]


def _folder(index: dict, files: dict[str, str] | None = None) -> Callable[[Path, Path], None]:
    """A diffusers-like folder {tmp}/m with this model_index.json and these small files."""

    def setup(tmp: Path, run: Path) -> None:
        folder = tmp / "m"
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps(index))
        for rel, text in (files or {}).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)

    return setup


_T5 = ["transformers", "T5EncoderModel"]
_FLUX = {"_class_name": "FluxPipeline", "text_encoder_2": _T5, "transformer": ["d", "F"]}
_SD3 = {"_class_name": "StableDiffusion3Pipeline", "text_encoder_3": _T5}

CASES = [
    Case(
        "flow-flux-fill-folder",
        [*ONE, "--model", "{tmp}/m"],
        "FluxFillPipeline",
        _folder({**_FLUX, "_class_name": "FluxFillPipeline"}),
        new_out=True,
    ),
    Case(
        "flow-flux-kontext-folder",
        [*ONE, "--model", "{tmp}/m"],
        "FluxKontextPipeline",
        _folder({**_FLUX, "_class_name": "FluxKontextPipeline"}),
        new_out=True,
    ),
    Case(
        "flow-flux-redux-folder",
        [*ONE, "--model", "{tmp}/m"],
        "FluxPriorReduxPipeline",
        _folder({"_class_name": "FluxPriorReduxPipeline"}),
        new_out=True,
    ),
    Case(
        "flow-sd3-img2img-folder",
        [*ONE, "--model", "{tmp}/m"],
        "StableDiffusion3Img2ImgPipeline",
        _folder({**_SD3, "_class_name": "StableDiffusion3Img2ImgPipeline"}),
        new_out=True,
    ),
    Case(
        "flow-sd3-no-t5",
        [*ONE, "--model", "{tmp}/m"],
        "text_encoder_3",
        _folder({**_SD3, "text_encoder_3": [None, None]}),
        new_out=True,
    ),
    Case(
        "flow-flux-t5-folder-missing",
        [*ONE, "--model", "{tmp}/m"],
        "text_encoder_2",
        _folder(_FLUX),
        new_out=True,
    ),
    Case(
        "flow-flux-fill-weights",
        [*ONE, "--model", "{tmp}/m"],
        "384 input channels",
        _folder(
            _FLUX,
            {"text_encoder_2/config.json": "{}", "transformer/config.json": '{"in_channels": 384}'},
        ),
        new_out=True,
    ),
    Case(
        "flow-sdxl-refiner-folder",
        [*ONE, "--model", "{tmp}/m"],
        "SDXL refiner",
        _folder(
            {
                "_class_name": "StableDiffusionXLImg2ImgPipeline",
                "text_encoder": [None, None],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "requires_aesthetics_score": True,
            }
        ),
        new_out=True,
    ),
    Case(
        "flow-schnell-sld",
        [*ONE, "--model", "tiny-flux", "--config", "sld-max"],
        "FLUX schnell",
        new_out=True,
    ),
    Case(
        "flow-schnell-negative",
        [*ONE, "--model", "tiny-flux", "--config", "negative"],
        "'negative' (negative) cannot act on tiny-flux",
        new_out=True,
    ),
    Case(
        "flow-sd3-sega",
        [*ONE, "--model", "tiny-sd3", "--config", "sega-max"],
        "'sega-max' (sega)",
        new_out=True,
    ),
    Case(
        "flow-flux-dev-safree",
        [*ONE, "--model", "tiny-flux-dev", "--config", "safree"],
        "'safree' (safree)",
        new_out=True,
    ),
    Case(
        "flow-sd3-height-off-grid",
        [*GEN, "--prompt", "a body", "--model", "tiny-sd3", "--height", "40"],
        "height 40 is not a multiple of 16",
        new_out=True,
    ),
    Case(
        "flow-flux-width-off-grid",
        [*GEN, "--prompt", "a body", "--model", "tiny-flux", "--width", "24"],
        "width 24 is not a multiple of 16",
        new_out=True,
    ),
    Case(
        "flow-sd3-sld-without-cfg",
        [*ONE, "--model", "tiny-sd3", "--config", "sld-max", "--guidance-scale", "1"],
        "needs guidance_scale > 1",
        new_out=True,
    ),
]
