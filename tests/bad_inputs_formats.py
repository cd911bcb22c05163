"""Bad released weight files for --unet, --text-encoder and --lora: one line each, nothing made."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from badinput import GEN, I2P_SET, PROBE, Case, _write
from safetensors.torch import save

GEN_A = [*GEN, "--prompt", "a"]
UNET = [*GEN_A, "--unet"]
TEXT = [*GEN_A, "--text-encoder"]
LORA = [*GEN_A, "--lora"]
LORA_KEY = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora"


def _pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _torch(name: str, obj: Any) -> Callable[[Path, Path], None]:
    return _write(name, _pickle(obj))


CASES = [
    Case(
        "formats-unet-other-architecture",
        [*UNET, "{tmp}/u.safetensors"],
        "is for another architecture: tensor 'conv_in.weight' is (64, 4, 3, 3) there, "
        "(32, 4, 3, 3)",
        _write("u.safetensors", save({"conv_in.weight": torch.zeros(64, 4, 3, 3)})),
        new_out=True,
    ),
    Case(
        "formats-unet-ldm-other-architecture",
        [*UNET, "{tmp}/u.ckpt"],
        "tensor 'conv_in.weight' is (320, 4, 3, 3) there",
        _torch(
            "u.ckpt",
            {
                "state_dict": {
                    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)
                }
            },
        ),
        new_out=True,
    ),
    Case(
        "formats-unet-unknown-key",
        [*UNET, "{tmp}/u.safetensors"],
        "tensor 'foo.bar' is not one of its keys (1 of the file's 2 tensors are not)",
        _write(
            "u.safetensors",
            save({"conv_in.weight": torch.zeros(32, 4, 3, 3), "foo.bar": torch.zeros(1)}),
        ),
        new_out=True,
    ),
    Case(
        "formats-pickle-not-state-dict",
        [*UNET, "{tmp}/u.pt"],
        "holds a list, not a state dict",
        _torch("u.pt", [torch.zeros(1)]),
        new_out=True,
    ),
    Case(
        "formats-empty-ckpt",
        [*UNET, "{tmp}/u.ckpt"],
        "u.ckpt is not readable UNet weights",
        _write("u.ckpt", b""),
        new_out=True,
    ),
    Case(
        "formats-ckpt-no-unet-keys",
        [*UNET, "{tmp}/u.ckpt"],
        "holds no UNet keys (model.diffusion_model.*): only cond_stage_model, first_stage_model",
        _torch(
            "u.ckpt",
            {
                "state_dict": {
                    "first_stage_model.a": torch.zeros(1),
                    "cond_stage_model.b": torch.zeros(1),
                }
            },
        ),
        new_out=True,
    ),
    Case(
        "formats-ckpt-not-tensors",
        [*UNET, "{tmp}/u.ckpt"],
        "does not hold a state dict of tensors ('lr' is a float)",
        _torch("u.ckpt", {"state_dict": {"conv_in.bias": torch.zeros(32), "lr": 0.1}}),
        new_out=True,
    ),
    Case(
        "formats-text-encoder-other-width",
        [*TEXT, "{tmp}/te.safetensors"],
        "tensor 'final_layer_norm.weight' is (64,) there, (32,) in this model's text encoder",
        _write("te.safetensors", save({"text_model.final_layer_norm.weight": torch.zeros(64)})),
        new_out=True,
    ),
    Case(
        "formats-text-encoder-openclip",
        [*TEXT, "{tmp}/te.ckpt"],
        "OpenCLIP-named text encoder",
        _torch(
            "te.ckpt", {"state_dict": {"cond_stage_model.model.ln_final.weight": torch.zeros(32)}}
        ),
        new_out=True,
    ),
    Case(
        "formats-text-encoder-missing",
        [*TEXT, "{tmp}/nope"],
        "nope does not exist",
        new_out=True,
    ),
    Case(
        "formats-text-encoder-missing-probe",
        [*PROBE, "--model", "tiny", "--text-encoder", "{tmp}/nope.bin"],
        "nope.bin does not exist",
        new_out=True,
    ),
    Case(
        "formats-lora-other-base",
        [*LORA, "{tmp}/l.safetensors"],
        "is for another base: tensor",
        _write(
            "l.safetensors",
            save(
                {
                    f"{LORA_KEY}.down.weight": torch.ones(2, 64),
                    f"{LORA_KEY}.up.weight": torch.ones(64, 2),
                }
            ),
        ),
        new_out=True,
    ),
    Case(
        "formats-lora-not-a-lora",
        [*LORA, "{tmp}/l.safetensors"],
        "cannot be loaded faithfully as a LoRA",
        _write("l.safetensors", save({"conv_in.weight": torch.zeros(32, 4, 3, 3)})),
        new_out=True,
    ),
    Case(
        "formats-lora-scale-without-lora",
        [*GEN_A, "--lora-scale", "0.5"],
        "lora_scale is set but no lora file is given",
        new_out=True,
    ),
    Case(
        "formats-lora-missing-i2p",
        [*I2P_SET, "--columns", "prompt=prompt", "--lora", "{tmp}/nope.safetensors"],
        "nope.safetensors does not exist",
        _write("set.csv", "prompt\na\n"),
        new_out=True,
    ),
    Case(
        "formats-lora-scale-zero",
        [*LORA, "{tmp}/l.safetensors", "--lora-scale", "0"],
        "lora_scale 0 would leave the model as is",
        _write("l.safetensors", save({f"{LORA_KEY}.down.weight": torch.ones(2, 32)})),
        new_out=True,
    ),
]
