"""The toy model: the recipe retrains deterministically; the shipped weights load, checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from analysis.errors import AuditError
from analysis.toy.model import WEIGHTS_DIR, verify
from analysis.toy.train import Recipe, file_hashes, folder_sha256, train

#: a few seconds: a handful of images, steps and a small batch
FAST = Recipe(
    per_country=1,
    concept_items=8,
    per_harmless=4,
    vae_steps=6,
    vae_batch=8,
    unet_steps=6,
    text_steps=4,
    batch=8,
    warmup=2,
    threads=1,
)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    train(root / "a", FAST, log=lambda _: None)
    train(root / "b", FAST, log=lambda _: None)
    return root / "a", root / "b"


def test_retraining_is_deterministic(retrained) -> None:
    a, b = retrained
    assert file_hashes(a) == file_hashes(b)
    assert any(name.endswith(".safetensors") for name in file_hashes(a))
    meta = json.loads((a / "toy.json").read_text())
    assert meta["sha256"] == folder_sha256(file_hashes(a))
    assert meta["recipe"] == FAST.model_dump()
    assert meta["training_rates"]["JPN"]["images"] == 1


def test_losses_decrease(retrained) -> None:
    """The recorded losses of the short retrain fall (the UNet's: see the next test)."""
    meta = json.loads((retrained[0] / "toy.json").read_text())["loss"]
    assert meta["vae_last100"] < meta["vae_first"]
    assert meta["text_last"] < meta["text_first"]


def test_unet_loss_decreases_per_step() -> None:
    """The denoiser's loss falls on a fixed batch: the recipe's gradients point downhill."""
    import torch

    from analysis.toy.train import build_components, tokenize, train_denoiser

    parts = build_components(0)
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = tokenize(parts["tokenizer"], ["swedish body"] * 8)
    recipe = FAST.model_copy(update={"unet_steps": 30, "lr": 3e-3})
    losses = train_denoiser(parts, latents, ids, recipe, log=lambda _: None)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])


def test_shipped_weights_load_with_their_sha256() -> None:
    from analysis.generation.models import load_model

    meta = verify()
    model = load_model("toy")
    assert model.provenance["sha256"] == meta["sha256"]
    assert model.provenance["id"] == "toy" and "planted" in model.provenance["notice"]
    assert model.family == "sd1"
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert size <= 8 * 2**20


def test_a_corrupt_or_missing_weight_file_is_refused(tmp_path) -> None:
    from analysis.generation.models import load_model

    copy = tmp_path / "toy"
    shutil.copytree(WEIGHTS_DIR, copy)
    load_model(str(copy))  # a trained toy folder loads as a folder, verified the same way
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AuditError, match="corrupt"):
        load_model(str(copy))
    weights.unlink()
    with pytest.raises(AuditError, match="missing"):
        load_model(str(copy))


def test_the_toy_model_samples_at_its_trained_size_by_default() -> None:
    """unet.config.sample_size x the VAE's factor, read from the shipped configs (8 x 4 = 32)."""
    from analysis.generation.runner import build_spec

    spec = build_spec(model="toy", configs=["sd"], prompts=[{"prompt_id": "a", "prompt": "x"}])
    assert (spec.height, spec.width) == (32, 32)


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_a_report_on_the_toy_model_says_its_rates_are_planted(tmp_path, fmt) -> None:
    from conftest import tiny_probe

    from analysis.report import write_report
    from analysis.toy.world import NOTICE

    run = tmp_path / "run"
    tiny_probe(run, model="toy", countries=["JPN"], images_per_country=1, configs=["sd"])
    text = write_report([run], tmp_path / f"r.{fmt}", fmt=fmt).read_text(encoding="utf-8")
    words = "planted rates, not a finding about any real model or country"
    assert words in NOTICE and words in text.replace("\\", "")
