"""Bad input to `erase uce`: no concept, non-finite or out-of-range scales, targets that do not
pair with the concepts, concept list files that are not text lists, and an --out that is a run's
own file or another recipe's finished file."""

from __future__ import annotations

import json

import torch
from badinput import Case, _write
from safetensors.torch import save

from analysis.store.weights import RECIPE_KEY

UCE = ["erase", "uce", "--model", "tiny"]
OUT = ["--out", "{tmp}/u.safetensors"]
ONE = [*UCE, "--concept", "nudity"]


def _weights_file(**recipe: object) -> bytes:
    """A finished erased-weights file's bytes whose recorded recipe is `recipe`."""
    meta = {"format": "pt", RECIPE_KEY: json.dumps(recipe)}
    return save({"conv_in.weight": torch.zeros(1)}, metadata=meta)


CASES = [
    Case("uce-no-concept", [*UCE, *OUT], "--concept is missing"),
    Case("uce-blank-concept", [*UCE, "--concept", "  ", *OUT], "concept to erase is blank"),
    Case(
        "uce-erase-scale-nan",
        [*ONE, "--erase-scale", "nan", *OUT],
        "--erase-scale must be a finite number",
    ),
    Case("uce-erase-scale-zero", [*ONE, "--erase-scale", "0", *OUT], "--erase-scale must be"),
    Case(
        "uce-preserve-scale-inf",
        [*ONE, "--preserve-scale", "inf", *OUT],
        "--preserve-scale must be a finite number",
    ),
    Case("uce-lamb-zero", [*ONE, "--lamb", "0", *OUT], "--lamb must be positive"),
    Case("uce-lamb-negative", [*ONE, "--lamb", "-0.5", *OUT], "--lamb must be positive"),
    Case(
        "uce-guides-do-not-pair",
        [*ONE, "--concept", "blood", *[f"--guided-concept={g}" for g in "abc"], *OUT],
        "gives 3 targets for 2 concepts",
    ),
    Case("uce-erased-and-preserved", [*ONE, "--preserve", "nudity", *OUT], "'nudity' is both"),
    Case("uce-expand-unknown", [*ONE, "--expand-prompts", "style", *OUT], "'style' is unknown"),
    Case("uce-out-is-a-run", [*ONE, "--out", "{run}"], "must end in .safetensors"),
    Case(
        "uce-out-inside-a-run",
        [*ONE, "--out", "{run}/images/u.safetensors"],
        "own 'images'",
    ),
    Case(
        "uce-out-finished-other-recipe",
        [*ONE, *OUT],
        "concepts is ['cats'] there",
        _write("u.safetensors", _weights_file(method_family="uce", concepts=["cats"])),
    ),
    Case(
        "uce-out-is-an-esd-file",
        [*ONE, *OUT],
        "finished ESD file of another recipe",
        _write("u.safetensors", _weights_file(method_family="esd", concept="nudity")),
    ),
    Case(
        "uce-out-not-an-erase-file",
        [*ONE, *OUT],
        "exists and is not a UCE file",
        _write("u.safetensors", save({"x": torch.zeros(1)})),
    ),
    Case(
        "uce-concepts-file-not-utf8",
        [*UCE, "--concepts-file", "{tmp}/c.txt", *OUT],
        "c.txt is not UTF-8 text",
        _write("c.txt", b"\x89PNG\r\n\x1a\n\xff\xfe"),
    ),
    Case(
        "uce-concepts-file-nul",
        [*UCE, "--concepts-file", "{tmp}/c.txt", *OUT],
        "c.txt is not text",
        _write("c.txt", b"nudity\x00\x00\x00"),
    ),
    Case(
        "uce-concepts-file-format",
        [*UCE, "--concepts-file", "{tmp}/c.json", *OUT],
        "unknown list format '.json'",
        _write("c.json", '["nudity"]'),
    ),
    Case(
        "uce-concepts-file-no-column",
        [*UCE, "--concepts-file", "{tmp}/c.csv", *OUT],
        "c.csv has no 'concept' column",
        _write("c.csv", "prompt\nnudity\n"),
    ),
    Case(
        "uce-preserve-file-empty",
        [*ONE, "--preserve-file", "{tmp}/p.txt", *OUT],
        "p.txt lists no concepts",
        _write("p.txt", "# nothing\n\n"),
    ),
    Case(
        "uce-concepts-file-missing",
        [*UCE, "--concepts-file", "{tmp}/none.txt", *OUT],
        "none.txt does not exist",
    ),
]
