"""Bad input to `erase esd` and to the `--unet` loader: non-finite or out-of-range settings, an
--out that cannot or must not be written, and UNet files that would load without changing the
model (no tensors, foreign keys) or change it silently (int8, NaN)."""

from __future__ import annotations

import json

import torch
from badinput import ERASE, GEN, Case, _write
from safetensors.torch import save

from analysis.store.weights import RECIPE_KEY

OUT = ["--out", "{tmp}/e.safetensors"]
FAST = ["--iterations", "3", "--ddim-steps", "2", "--resolution", "16"]
UNET = [*GEN, "--prompt", "a", "--unet", "{tmp}/u.safetensors"]


def _esd_file(**recipe: object) -> bytes:
    """A finished ESD file's bytes whose recorded recipe is `recipe`."""
    meta = {"format": "pt", RECIPE_KEY: json.dumps({"method_family": "esd", **recipe})}
    return save({"conv_in.weight": torch.zeros(1)}, metadata=meta)


CASES = [
    Case("erase-lr-inf", [*ERASE, "--lr", "inf", *OUT], "--lr must be a finite number"),
    Case("erase-lr-nan", [*ERASE, "--lr", "nan", *OUT], "--lr must be a finite number"),
    Case(
        "erase-negative-guidance-nan",
        [*ERASE, "--negative-guidance", "nan", *OUT],
        "--negative-guidance must be a finite number",
    ),
    Case(
        "erase-negative-guidance-negative",
        [*ERASE, "--negative-guidance", "-1", *OUT],
        "--negative-guidance must be at least 0",
    ),
    Case(
        "erase-start-guidance-inf",
        [*ERASE, "--start-guidance", "inf", *OUT],
        "--start-guidance must be a finite number",
    ),
    Case(
        "erase-checkpoint-every-zero",
        [*ERASE, "--checkpoint-every", "0", *OUT],
        "--checkpoint-every must be at least 1",
    ),
    Case(
        "erase-diverges",
        [*ERASE, "--recipe", "diffusers", "--lr", "1e30", *FAST, *OUT],
        "ESD training diverged",
    ),
    Case(
        "erase-out-folder-is-a-file",
        [*ERASE, "--out", "{tmp}/f.txt/e.safetensors"],
        "f.txt is a file",
        _write("f.txt", "not a folder"),
    ),
    Case(
        "erase-out-is-the-model",
        [*ERASE, "--model", "{tmp}/e.safetensors", *OUT],
        "is an input of this command",
        _write("e.safetensors", _esd_file()),
    ),
    Case(
        "erase-out-finished-other-recipe",
        [*ERASE, *FAST, *OUT],
        "concept is 'cats' there",
        _write("e.safetensors", _esd_file(concept="cats")),
    ),
    Case(
        "erase-out-not-an-esd-file",
        [*ERASE, *FAST, *OUT],
        "exists and is not an ESD file",
        _write("e.safetensors", save({"x": torch.zeros(1)})),
    ),
    Case(
        "erase-unet-no-tensors",
        UNET,
        "holds no tensors",
        _write("u.safetensors", save({})),
        new_out=True,
    ),
    Case(
        "erase-unet-foreign-keys",
        UNET,
        "none of its 1 tensors is a key",
        _write("u.safetensors", save({"not.a.unet.key": torch.zeros(1)})),
        new_out=True,
    ),
    Case(
        "erase-unet-int8",
        UNET,
        "'conv_in.weight' is torch.int8",
        _write("u.safetensors", save({"conv_in.weight": torch.zeros(1, dtype=torch.int8)})),
        new_out=True,
    ),
    Case(
        "erase-unet-nan",
        UNET,
        "holds NaN or infinite values",
        _write("u.safetensors", save({"conv_in.weight": torch.full((1,), float("nan"))})),
        new_out=True,
    ),
]
