"""Bad inputs of `toy train`, `--model <toy folder>` and `--classifier toy`: one line each."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from badinput import GEN, PROBE, Case, _write

TRAIN = ["toy", "train", "--out", "{tmp}/new", "--vae-steps", "1", "--unet-steps", "1"]


def _toy_copy(damage: str) -> Callable[[Path, Path], None]:
    """{tmp}/toy: a copy of the shipped toy weights, with one file corrupted or removed."""

    def setup(tmp: Path, run: Path) -> None:
        from analysis.toy.model import WEIGHTS_DIR

        shutil.copytree(WEIGHTS_DIR, tmp / "toy")
        target = tmp / "toy" / "unet" / "diffusion_pytorch_model.safetensors"
        if damage == "corrupt":
            target.write_bytes(b"\x00" * 64)
        elif damage == "missing":
            target.unlink()
        elif damage == "meta":
            (tmp / "toy" / "toy.json").write_text("{not json", encoding="utf-8")

    return setup


#: an audit whose second model names a config the file does not declare
AUDIT_MODEL_CONFIGS = """configs = ["sd", "sld-max"]

[[models]]
name = "toy"
model = "toy"

[[models]]
name = "esd"
model = "toy"
configs = ["sld-strong"]

[probe]
countries = ["JPN"]
images_per_country = 1
"""


CASES = [
    Case("toy-train-zero-unet-steps", [*TRAIN[:-1], "0"], "unet_steps", new_out=True),
    Case("toy-train-zero-vae-steps", [*TRAIN[:5], "0", *TRAIN[6:]], "vae_steps", new_out=True),
    Case("toy-train-zero-threads", [*TRAIN, "--threads", "0"], "threads", new_out=True),
    Case("toy-train-zero-per-country", [*TRAIN, "--per-country", "0"], "per_country", new_out=True),
    Case("toy-train-negative-seed", [*TRAIN, "--seed", "-1"], "seed", new_out=True),
    Case(
        "toy-train-out-not-empty",
        ["toy", "train", "--out", "{tmp}", "--unet-steps", "1"],
        "not empty",
        _write("keep.txt", "mine"),
    ),
    Case(
        "toy-train-out-is-a-run",
        ["toy", "train", "--out", "{run}", "--unet-steps", "1"],
        "run folder",
    ),
    Case(
        "toy-model-corrupt-weights",
        [*GEN, "--prompt", "a tree", "--model", "{tmp}/toy"],
        "is corrupt",
        _toy_copy("corrupt"),
        new_out=True,
    ),
    Case(
        "toy-model-missing-weights",
        [*GEN, "--prompt", "a tree", "--model", "{tmp}/toy"],
        "is missing",
        _toy_copy("missing"),
        new_out=True,
    ),
    Case(
        "toy-model-unreadable-meta",
        [*GEN, "--prompt", "a tree", "--model", "{tmp}/toy"],
        "toy.json",
        _toy_copy("meta"),
        new_out=True,
    ),
    Case(
        "toy-check-model-without-world",
        ["toy", "check", "--out", "{tmp}/new", "--model", "tiny"],
        "no planted world",
        new_out=True,
    ),
    Case(
        "toy-check-corrupt-weights",
        ["toy", "check", "--out", "{tmp}/new", "--model", "{tmp}/toy"],
        "is corrupt",
        _toy_copy("corrupt"),
        new_out=True,
    ),
    Case(
        "toy-check-unknown-country",
        ["toy", "check", "--out", "{tmp}/new", "--countries", "JPN,XXX"],
        "XXX",
        new_out=True,
    ),
    Case("toy-check-out-is-a-run", ["toy", "check", "--out", "{run}"], "run"),
    Case(
        "toy-check-out-is-a-file",
        ["toy", "check", "--out", "{tmp}/file.txt"],
        "file.txt",
        _write("file.txt", "mine"),
    ),
    Case(
        "toy-probe-unknown-rule",
        [*PROBE, "--model", "toy", "--rule", "toy-magenta"],
        "toy-magenta-fraction",
        new_out=True,
    ),
    Case(
        "toy-classify-not-a-folder",
        ["classify", "{tmp}/nothing", "--classifier", "toy"],
        "nothing is not a folder",
    ),
    Case(
        "toy-audit-model-config-not-in-file",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new", "--dry-run", "--no-estimate"],
        "config 'sld-strong' of model 'esd' is not one of the file's configs",
        _write("a.toml", AUDIT_MODEL_CONFIGS),
        new_out=True,
    ),
    Case(
        "toy-audit-model-configs-empty",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new", "--dry-run", "--no-estimate"],
        "model 'esd' lists no configs",
        _write("a.toml", AUDIT_MODEL_CONFIGS.replace('["sld-strong"]', "[]")),
        new_out=True,
    ),
    Case(
        "toy-audit-probe-rule-unknown",
        ["run", "{tmp}/a.toml", "--out", "{tmp}/new", "--dry-run", "--no-estimate"],
        "toy-magenta-fraction",
        _write("a.toml", AUDIT_MODEL_CONFIGS.replace("[probe]", '[probe]\nrule = "magenta"')),
        new_out=True,
    ),
]
