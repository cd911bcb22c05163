"""UCE for FLUX against the authors' uce_flux_edit.py, its --unet round trip, and SD's image
filter as a standalone arm on a flow model (these pipelines ship no safety checker)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from analysis.erase.uce import UceSettings
from analysis.erase.uce_flux import edited_layers, erase_uce_flux, flux_embeddings, uce_flux_edit
from analysis.errors import AuditError
from analysis.generation.models import LoadedModel, load_model
from analysis.store.weights import read_recipe

ORACLE = Path(__file__).parent / "oracles" / "uce_flux_authors.py"
MARKER = "# ---- authors' file below ----\n"
#: sha256 of trainscripts/uce_flux_edit.py at 28c81ed5 (the file below the marker)
AUTHORS_SHA256 = "ab64d9d451b8e3b89912d4b2d188d0669d7229fdbf3de3b2a7f1e5106765b414"


@pytest.fixture(scope="module")
def authors() -> ModuleType:
    """Their script as a module (it turns grad off globally on import: undone, and their UCE is
    then run under no_grad, the state the script runs in). Nothing needs stubbing."""
    body = ORACLE.read_text().split(MARKER, 1)[1]
    assert hashlib.sha256(body.encode()).hexdigest() == AUTHORS_SHA256, "the oracle was edited"
    spec = importlib.util.spec_from_file_location("uce_flux_authors", ORACLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    grad = torch.is_grad_enabled()
    try:
        spec.loader.exec_module(module)
    finally:
        torch.set_grad_enabled(grad)
    return module


@pytest.fixture(scope="module")
def flux768(tmp_path_factory) -> tuple[Path, LoadedModel]:
    """tiny-flux with a 768-wide CLIP, saved as a FluxPipeline folder.

    The script tells the pooled-CLIP layer from the T5 one by its input width 768 (FLUX.1's
    CLIP-L), so the oracle runs on a tiny FLUX with that width; T5 stays 64 wide."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from analysis.generation import flow_tiny

    parts = flow_tiny.tiny_flux_components()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        parts["text_encoder"] = flow_tiny._clip(False, 768, 1, 4, 768, "quick_gelu").eval()
        parts["transformer"] = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=64,
            pooled_projection_dim=768,
            axes_dims_rope=(4, 6, 6),
        ).eval()
    folder = tmp_path_factory.mktemp("flux768") / "model"
    FluxPipeline(**parts).save_pretrained(folder)
    return folder, load_model(str(folder))


CASES = {
    "to-empty": (["nudity"], [""], [], 1.0, 1.0, 0.5),
    "guided-preserved-scaled": (["nudity", "magenta"], ["a tree", ""], ["a house"], 3.0, 0.25, 0.1),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_edit_equals_the_authors_flux_uce(authors, flux768, tmp_path, case):
    folder, model = flux768
    erase, guide, keep, s_e, s_p, lamb = CASES[case]
    with torch.no_grad():  # the script's global state
        authors.UCE(
            str(folder), erase, guide, keep, s_e, s_p, lamb, tmp_path, "x", torch.float32,
            "cpu", 32,
        )  # fmt: skip
    theirs = load_file(tmp_path / "x.safetensors")
    settings = UceSettings(
        concept=erase, guided_concept=guide, preserve=keep, erase_scale=s_e,
        preserve_scale=s_p, lamb=lamb,
    )  # fmt: skip
    ours = uce_flux_edit(model, settings)
    assert (
        set(ours)
        == set(theirs)
        == {
            "context_embedder.weight",
            "time_text_embed.text_embedder.linear_1.weight",
        }
    )
    base = dict(model.transformer.named_parameters())
    for name, weight in ours.items():
        assert (weight - base[name]).abs().max() > 1e-3  # the edit moved it
        torch.testing.assert_close(weight, theirs[name], rtol=0, atol=1e-6)


def test_edit_solves_eq7_with_the_layer_outputs_in_float64():
    """Independent oracle on tiny-flux itself (CLIP 32 wide): float64 least squares of
    lamb|W'-W|^2 + s_e sum|W'c - (W g + b)|^2 + s_p sum|W'p - (W p + b)|^2, with c the T5 token
    for context_embedder and the pooled CLIP for text_embedder.linear_1."""
    model = load_model("tiny-flux")
    settings = UceSettings(
        concept=["nudity", "blood"], guided_concept=["a tree"], preserve=["a house"], lamb=0.3
    )
    erase, guide = settings.pairs()
    emb = flux_embeddings(model, [*erase, *guide, "a house"])
    ours = uce_flux_edit(model, settings)
    layers = dict(edited_layers(model.transformer))
    assert list(layers) == ["time_text_embed.text_embedder.linear_1", "context_embedder"]
    for name, layer in layers.items():
        slot = 1 if name.startswith("time_text_embed") else 0
        w, b = layer.weight.double(), layer.bias.double()
        e = {k: v[slot].double() for k, v in emb.items()}
        xs = [e[c] for c in erase] + [e["a house"]]
        ys = [w @ e[g] + b for g in guide] + [w @ e["a house"] + b]
        a = torch.cat([torch.stack(xs), 0.3**0.5 * torch.eye(w.shape[1], dtype=torch.float64)])
        rhs = torch.cat([torch.stack(ys), 0.3**0.5 * w.T])
        expected = torch.linalg.lstsq(a, rhs).solution.T
        torch.testing.assert_close(ours[f"{name}.weight"].double(), expected, rtol=0, atol=1e-4)
    with pytest.raises(AuditError, match="not SD3"):
        uce_flux_edit(load_model("tiny-sd3"), settings)


def _main(args: list[str]) -> None:
    from analysis.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)


def test_cli_file_loads_over_flux_and_changes_the_concept_image(tmp_path):
    out = tmp_path / "uce.safetensors"
    _main(["erase", "uce", "--model", "tiny-flux", "--concept", "magenta", "--out", str(out)])
    tensors, recipe = load_file(out), read_recipe(out)
    assert set(tensors) == {
        "context_embedder.weight",
        "time_text_embed.text_embedder.linear_1.weight",
    }
    assert recipe["family"] == "flux" and recipe["t5_length"] == 32
    assert recipe["recipe_source"].endswith("uce_flux_edit.py")
    data = out.read_bytes()
    model = load_model("tiny-flux")
    assert erase_uce_flux(model, UceSettings(concept=["magenta"]), out)["skipped"] is True
    assert out.read_bytes() == data
    base = ["generate", "--model", "tiny-flux", "--prompt", "magenta", "--steps", "2"]
    base += ["--height", "32", "--width", "32", "--images-per-prompt", "1"]
    for name, extra in (("base", []), ("uce", ["--unet", str(out)])):
        _main([*base, *extra, "--out", str(tmp_path / name)])
    pngs = [sorted((tmp_path / n / "images").rglob("*.png")) for n in ("base", "uce")]
    a, b = (np.asarray(Image.open(p[0]), dtype=np.int16) for p in pngs)
    assert np.abs(a - b).max() > 0  # the edited text projections changed the concept's image
    edited = load_model("tiny-flux", unet=str(out))
    state = edited.transformer.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    assert edited.provenance["unet"]["coverage"].startswith("partial (2 of")
    assert edited.provenance["unet"]["esd"]["method_family"] == "uce"
    manifest = json.loads((tmp_path / "uce" / "manifest.json").read_text())
    assert manifest["spec"]["unet_sha256"] == hashlib.sha256(data).hexdigest()


def test_image_filter_is_a_standalone_arm_on_flux(tmp_path, monkeypatch):
    """`sd+filter` on tiny-flux picks the tiny checker (as for SD's tiny models), scores the
    flux images exactly as diffusers' checker forward does, and gives the guardrail row."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from analysis.classifiers import load_verdicts
    from analysis.classifiers import safety_checker as sc

    original = sc.tiny_checker

    def strict(seed: int = 0):  # concept 0 at a threshold no cosine reaches from below: all blocked
        checker = original(seed)
        with torch.no_grad():
            checker.concept_embeds_weights[0] = -1.5
        return checker

    monkeypatch.setattr(sc, "tiny_checker", strict)
    out = tmp_path / "probe"
    args = ["probe", "ethnic-bias", "--out", str(out), "--model", "tiny-flux"]
    args += ["--countries", "JPN,KEN", "--images-per-country", "2", "--steps", "2"]
    _main([*args, "--height", "32", "--width", "32", "--config", "sd+filter"])
    scores = pd.read_parquet(out / "scores" / "safety-checker.parquet")
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    classifier = sc.SafetyCheckerClassifier(checker=strict())
    checker: StableDiffusionSafetyChecker = classifier.checker
    for row in scores.itertuples():
        item = items.loc[row.item_id]
        png = out / "images" / item["config"] / item["prompt_id"] / f"{item['image_index']}.png"
        clip_input = classifier.pixel_values([Image.open(png)])
        with torch.no_grad():
            _, flags = checker(clip_input=clip_input, images=np.zeros((1, 32, 32, 3)))
        assert bool(row.verdict) is bool(flags[0]) is True
    assert len(scores) == 4
    table = pd.read_csv(out / "guardrails" / "guardrails.csv").set_index("guardrail")
    row = table.loc["sd+filter"]
    assert (row["family"], row["block_n"], row["block_rate"]) == ("image filter", 4, 1.0)
    verdicts = load_verdicts(out, "safety-checker")
    assert verdicts["verdict"].astype(bool).all()
