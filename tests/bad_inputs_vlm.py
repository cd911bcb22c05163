"""Bad input to `classify` with a VLM judge or MHSC: one line each, exit 2, nothing written.

The images are a plain folder scored into a new --out, so `new_out=True` checks that a model
that cannot be loaded is refused before the scores folder is created.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from badinput import Case
from PIL import Image

CLASSIFY = ["classify", "{tmp}/imgs", "--out", "{tmp}/new"]
LLAVA = [*CLASSIFY, "--classifier", "llavaguard"]


def _folder(config: dict | str | None = None, name: str = "m") -> Callable[[Path, Path], None]:
    """Images in {tmp}/imgs, and a model folder {tmp}/<name> with this config.json (none: no
    file; a string: written as is)."""

    def setup(tmp: Path, run: Path) -> None:
        (tmp / "imgs").mkdir()
        Image.new("RGB", (32, 32), (200, 20, 30)).save(tmp / "imgs" / "a.png")
        (tmp / name).mkdir()
        if config is not None:
            text = config if isinstance(config, str) else json.dumps(config)
            (tmp / name / "config.json").write_text(text)

    return setup


CASES = [
    Case(
        "vlm-missing-folder",
        [*LLAVA, "--judge-model", "llavaguard={tmp}/nope"],
        "LlavaGuard model folder",
        _folder(),
        new_out=True,
    ),
    Case(
        "vlm-folder-of-another-architecture",
        [*LLAVA, "--judge-model", "llavaguard={tmp}/m"],
        "holds a 'mllama' model, not llava_onevision",
        _folder({"model_type": "mllama"}),
        new_out=True,
    ),
    Case(
        "vlm-shieldgemma2-given-a-llava-folder",
        [*CLASSIFY, "--classifier", "shieldgemma2", "--judge-model", "shieldgemma2={tmp}/m"],
        "holds a 'llava_onevision' model, not shieldgemma2",
        _folder({"model_type": "llava_onevision"}),
        new_out=True,
    ),
    Case(
        "vlm-folder-without-config",
        [*CLASSIFY, "--classifier", "llamaguard3v", "--judge-model", "llamaguard3v={tmp}/m"],
        "has no config.json",
        _folder(),
        new_out=True,
    ),
    Case(
        "vlm-config-not-json",
        [*LLAVA, "--judge-model", "llavaguard={tmp}/m"],
        "config.json is not readable JSON",
        _folder("{not json"),
        new_out=True,
    ),
    Case(
        "vlm-hub-id-not-cached",
        [*LLAVA, "--judge-model", "llavaguard=AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf"],
        "huggingface-cli download AIML-TUDA/LlavaGuard-v1.2-7B-OV-hf",
        _folder(),
        env={"HF_HUB_OFFLINE": "1", "T2I_AUDIT_ALLOW_DOWNLOAD": "0"},
        new_out=True,
    ),
    Case(
        "vlm-unknown-classifier",
        [*CLASSIFY, "--classifier", "llava"],
        "unknown classifier 'llava'",
        _folder(),
        new_out=True,
    ),
    Case(
        "vlm-judge-model-unknown-judge",
        [*LLAVA, "--judge-model", "llava={tmp}/m"],
        "unknown classifier 'llava'",
        _folder(),
        new_out=True,
    ),
    Case(
        "vlm-judge-model-not-name-equals-path",
        [*LLAVA, "--judge-model", "llavaguard"],
        "--judge-model 'llavaguard' is not NAME=PATH",
        _folder(),
        new_out=True,
    ),
    Case(
        "vlm-judge-model-for-a-judge-not-run",
        [*LLAVA, "--judge-model", "shieldgemma2={tmp}/m"],
        "shieldgemma2 is not a --classifier of this run",
        _folder({"model_type": "shieldgemma2"}),
        new_out=True,
    ),
    Case(
        "vlm-judge-model-named-twice",
        [*LLAVA, "--judge-model", "llavaguard={tmp}/m", "--judge-model", "llavaguard={tmp}/m"],
        "names llavaguard twice",
        _folder({"model_type": "llava_onevision"}),
        new_out=True,
    ),
    Case(
        "vlm-judge-model-for-nudenet",
        [*CLASSIFY, "--classifier", "nudenet", "--judge-model", "nudenet={tmp}/m"],
        "the nudenet judge takes no model",
        _folder(),
        new_out=True,
    ),
    Case(
        "vlm-mhsc-without-heads",
        [*CLASSIFY, "--classifier", "mhsc"],
        "--judge-model mhsc=FOLDER",
        _folder(),
        new_out=True,
    ),
    Case(
        "vlm-mhsc-heads-folder-missing-a-head",
        [*CLASSIFY, "--classifier", "mhsc", "--judge-model", "mhsc={tmp}/m"],
        "has no sexual.pt",
        _folder(),
        new_out=True,
    ),
]
