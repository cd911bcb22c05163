"""Options several commands share, declared once so their names, defaults and help agree."""

from __future__ import annotations

import typer

HEIGHT = typer.Option(
    None, "--height", min=8, help="Default: the model family's (512 SD 1.x, 768 SD 2 v, 1024 XL)."
)
WIDTH = typer.Option(None, "--width", min=8, help="Default: the model family's.")
COMPILE = typer.Option(
    False,
    "--compile",
    help="torch.compile the UNet (checked against eager first; part of the run's spec).",
)
SHARD = typer.Option(None, "--shard", help="i/N; default from RANK/WORLD_SIZE or SLURM.")
UNET_CONFIG = typer.Option(
    None,
    "--unet-config",
    help="NAME=FILE: the same run with these UNet weights (ESD...) in OUT/models/NAME, compared "
    "with sd on the same seeds. Repeatable.",
)
SAFETY_CHECKER_MODEL = typer.Option(
    None,
    "--safety-checker-model",
    help="SD's image safety checker (for --config sd+filter or --classifier safety-checker): "
    "a folder, a hub id from the local cache, or 'tiny' (tests); default "
    "CompVis/stable-diffusion-safety-checker.",
)
TEXT_ENCODER = typer.Option(
    None,
    "--text-encoder",
    help="Load a text encoder over the model's (AdvUnlearn): a transformers CLIPTextModel folder "
    "or a .safetensors/.pt/.bin state dict, full or partial; hashed into the run.",
)
LORA = typer.Option(
    None,
    "--lora",
    help="Fuse a diffusers/peft LoRA (.safetensors or folder, as load_lora_weights reads; MACE, "
    "SPM) into the UNet and text encoder; hashed into the run. Needs the 'lora' extra.",
)
LORA_SCALE = typer.Option(None, "--lora-scale", help="The --lora's scale (default 1.0).")
