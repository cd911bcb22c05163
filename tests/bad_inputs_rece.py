"""Bad input to `erase rece`: no or blank concept, a concept both erased and preserved,
out-of-range or non-finite numbers (epochs, scales, lamb, the ridge weight), an unknown
technique or model, and an --out that is a folder or another recipe's finished file. Each
would write {tmp}/new/r.safetensors: the folder must not be created."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from badinput import Case, _write
from safetensors.torch import save

from analysis.store.weights import RECIPE_KEY

RECE = ["erase", "rece", "--model", "tiny"]
OUT = ["--out", "{tmp}/new/r.safetensors"]
ONE = [*RECE, "--concept", "nudity"]


def _weights_file(**recipe: object) -> bytes:
    """A finished erased-weights file's bytes whose recorded recipe is `recipe`."""
    meta = {"format": "pt", RECIPE_KEY: json.dumps(recipe)}
    return save({"conv_in.weight": torch.zeros(1)}, metadata=meta)


def _folder(name: str):
    def setup(tmp: Path, run: Path) -> None:
        (tmp / name).mkdir()

    return setup


CASES = [
    Case("rece-no-concept", [*RECE, *OUT], "--concept is missing", new_out=True),
    Case(
        "rece-blank-concept",
        [*RECE, "--concept", " ", *OUT],
        "concept to erase is blank",
        new_out=True,
    ),
    Case(
        "rece-erased-and-preserved",
        [*ONE, "--preserve", " nudity ", *OUT],
        "'nudity' is both",
        new_out=True,
    ),
    Case(
        "rece-epochs-zero",
        [*ONE, "--epochs", "0", *OUT],
        "--epochs must be at least 1",
        new_out=True,
    ),
    Case(
        "rece-epochs-negative",
        [*ONE, "--epochs", "-2", *OUT],
        "--epochs must be at least 1",
        new_out=True,
    ),
    Case(
        "rece-erase-scale-negative",
        [*ONE, "--erase-scale", "-1", *OUT],
        "--erase-scale must be positive",
        new_out=True,
    ),
    Case(
        "rece-preserve-scale-negative",
        [*ONE, "--preserve-scale", "-0.1", *OUT],
        "--preserve-scale must be at least 0",
        new_out=True,
    ),
    Case(
        "rece-lamb-nan",
        [*ONE, "--lamb", "nan", *OUT],
        "--lamb must be a finite number",
        new_out=True,
    ),
    Case(
        "rece-regular-scale-zero",
        [*ONE, "--regular-scale", "0", *OUT],
        "--regular-scale must be positive",
        new_out=True,
    ),
    Case(
        "rece-regular-scale-inf",
        [*ONE, "--regular-scale", "inf", *OUT],
        "--regular-scale must be a finite number",
        new_out=True,
    ),
    Case(
        "rece-technique-unknown",
        [*ONE, "--technique", "orthogonal", *OUT],
        "'orthogonal' is unknown",
        new_out=True,
    ),
    Case(
        "rece-guides-do-not-pair",
        [*ONE, "--concept", "blood", *[f"--guided-concept={g}" for g in "abc"], *OUT],
        "gives 3 targets for 2 concepts",
        new_out=True,
    ),
    Case(
        "rece-unknown-model",
        [*RECE[:2], "--model", "{tmp}/nosuch", "--concept", "nudity", *OUT],
        "nosuch does not exist",
        new_out=True,
    ),
    Case(
        "rece-sdxl-model",
        [*RECE[:2], "--model", "tiny-sdxl", "--concept", "nudity", *OUT],
        "RECE here edits SD 1.x/2.x",
        new_out=True,
    ),
    Case(
        "rece-out-is-a-folder",
        [*ONE, "--out", "{tmp}/d.safetensors"],
        "is a directory",
        _folder("d.safetensors"),
    ),
    Case(
        "rece-out-finished-other-recipe",
        [*ONE, "--out", "{tmp}/r.safetensors"],
        "finished RECE file of another recipe: concepts is ['cats'] there",
        _write("r.safetensors", _weights_file(method_family="rece", concepts=["cats"])),
    ),
    Case(
        "rece-out-is-a-uce-file",
        [*ONE, "--out", "{tmp}/r.safetensors"],
        "finished UCE file of another recipe: method_family is 'uce' there",
        _write("r.safetensors", _weights_file(method_family="uce", concepts=["nudity"])),
    ),
    Case(
        "rece-out-not-an-erase-file",
        [*ONE, "--out", "{tmp}/r.safetensors"],
        "exists and is not a RECE file",
        _write("r.safetensors", save({"x": torch.zeros(1)})),
    ),
]
