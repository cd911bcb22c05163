"""Model loading: built-ins, local folders, UNet swaps, and clear errors when weights are absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from analysis.errors import AuditError
from analysis.generation import SamplingParams, load_model, sample
from analysis.guidance import resolve_config

PARAMS = SamplingParams(steps=2, guidance_scale=7.5, height=32, width=32)


def test_tiny_is_deterministic_and_records_provenance() -> None:
    a, b = load_model("tiny"), load_model("tiny")
    torch.manual_seed(123)  # the global RNG must not matter
    c = load_model("tiny")
    for x, y in zip(a.unet.parameters(), c.unet.parameters(), strict=True):
        assert torch.equal(x, y)
    la = sample(a, ["x"], [0], resolve_config("sd"), PARAMS, output_type="latent")
    lb = sample(b, ["x"], [0], resolve_config("sd"), PARAMS, output_type="latent")
    assert torch.equal(la, lb)
    prov = a.provenance
    assert prov["kind"] == "builtin" and prov["safety_checker"] == "off"
    assert prov["scheduler"]["class"] == "PNDMScheduler" and prov["dtype"] == "float32"


def test_missing_hub_model_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        AuditError, match=r"not available: looked in the Hugging Face cache.*download"
    ):
        load_model("CompVis/stable-diffusion-v1-4")


def test_missing_paths_and_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        load_model(str(tmp_path / "nope.safetensors"))
    with pytest.raises(AuditError, match=r"model_index\.json"):
        load_model(str(tmp_path))
    with pytest.raises(AuditError, match="is not a Stable Diffusion scheduler"):
        load_model("tiny", scheduler="Warp")
    with pytest.raises(AuditError, match="--unet"):
        load_model("tiny", unet=str(tmp_path / "esd.safetensors"))


def test_local_diffusers_folder_round_trip(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    tiny = load_model("tiny")
    StableDiffusionPipeline(
        **tiny.components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(tmp_path / "sd")
    local = load_model(str(tmp_path / "sd"))
    assert local.provenance["kind"] == "folder"
    a = sample(tiny, ["x"], [1], resolve_config("sd"), PARAMS, output_type="latent")
    b = sample(local, ["x"], [1], resolve_config("sd"), PARAMS, output_type="latent")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_unet_swap_changes_output_and_records_sha256(tmp_path: Path) -> None:
    base = load_model("tiny")
    state = {k: v + 0.01 * torch.ones_like(v) for k, v in base.unet.state_dict().items()}
    path = tmp_path / "esd-unet.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    swapped = load_model("tiny", unet=str(path))
    assert len(swapped.provenance["unet"]["sha256"]) == 64
    a = sample(base, ["x"], [1], resolve_config("sd"), PARAMS, output_type="latent")
    b = sample(swapped, ["x"], [1], resolve_config("sd"), PARAMS, output_type="latent")
    assert (a - b).abs().max() > 1e-3
    bad = tmp_path / "bad.safetensors"
    save_file({"foo": torch.zeros(2)}, str(bad))
    with pytest.raises(AuditError, match="none of its 1 tensors is a key of this model's UNet"):
        load_model("tiny", unet=str(bad))
