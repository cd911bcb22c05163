"""UCE on the tiny model: the edit equals the authors' own UCE function, solves eq. 7, the file
records its recipe and is kept or refused as a finished artefact, and `--unet` audits it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

from analysis.erase.uce import UceSettings, edited_layers, erase_uce, last_token_embeddings
from analysis.erase.uce import uce_edit as our_edit
from analysis.errors import AuditError
from analysis.generation.models import load_model
from analysis.store.weights import read_recipe

ORACLE = Path(__file__).parent / "oracles" / "uce_authors.py"
MARKER = "# ---- authors' file below ----\n"
#: sha256 of trainscripts/uce_sd_erase.py at 28c81ed5 (the file below the marker)
AUTHORS_SHA256 = "c133789824157a9d0d2566b900be0a1b46389c76fa35c0ae35b08625b69ce8f1"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def authors() -> ModuleType:
    """Their script as a module; it turns grad off globally on import, so that is undone, and
    its UCE reads the module globals `device` and `torch_dtype` that its __main__ sets."""
    body = ORACLE.read_text().split(MARKER, 1)[1]
    assert hashlib.sha256(body.encode()).hexdigest() == AUTHORS_SHA256, "the oracle was edited"
    spec = importlib.util.spec_from_file_location("uce_authors", ORACLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    grad = torch.is_grad_enabled()
    try:
        spec.loader.exec_module(module)
    finally:
        torch.set_grad_enabled(grad)
    module.device, module.torch_dtype = "cpu", torch.float32
    return module


def _theirs(authors, tiny, tmp_path, erase, guide, preserve, erase_scale, preserve_scale, lamb):
    """Run the authors' UCE on a diffusers pipeline built from our tiny model's components."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny.components(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    with torch.no_grad():
        authors.UCE(pipe, erase, guide, preserve, erase_scale, preserve_scale, lamb, tmp_path, "x")
    return load_file(tmp_path / "x.safetensors")


CASES = {
    "to-empty": (["nudity"], [""], [], 1.0, 1.0, 0.5),
    "guided-and-preserved": (
        ["nudity", "magenta"],
        ["a tree", "a tree"],
        ["a house"],
        1.0,
        1.0,
        0.5,
    ),
    "scales": (["nudity", "blood"], ["a cat", ""], ["a house", "a dog"], 3.0, 0.25, 0.05),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_edit_equals_the_authors_uce(authors, tiny, tmp_path, case):
    erase, guide, preserve, s_e, s_p, lamb = CASES[case]
    theirs = _theirs(authors, tiny, tmp_path, erase, guide, preserve, s_e, s_p, lamb)
    settings = UceSettings(
        concept=erase,
        guided_concept=guide,
        preserve=preserve,
        erase_scale=s_e,
        preserve_scale=s_p,
        lamb=lamb,
    )
    ours = our_edit(tiny, settings)
    assert set(ours) == set(theirs) and len(ours) == 8  # to_k and to_v of the 4 attn2 blocks
    base = dict(tiny.unet.named_parameters())
    for name, weight in ours.items():
        assert (weight - base[name]).abs().max() > 1e-3  # the edit moved it
        torch.testing.assert_close(weight, theirs[name], rtol=0, atol=1e-6)


def test_edit_solves_eq7_in_float64(tiny):
    """Independent oracle: W' = argmin lamb|W'-W|^2 + s_e sum|W'c - Wg|^2 + s_p sum|W'p - Wp|^2,
    solved by float64 least squares on the stacked system (not the inverse the script uses)."""
    settings = UceSettings(
        concept=["nudity", "blood"], guided_concept=["a tree"], preserve=["a house"], lamb=0.3
    )
    erase, guide = settings.pairs()
    assert guide == ["a tree", "a tree"]
    emb = {
        k: v.double() for k, v in last_token_embeddings(tiny, [*erase, *guide, "a house"]).items()
    }
    ours = our_edit(tiny, settings)
    for name, layer in edited_layers(tiny.unet):
        w = layer.weight.double()
        xs = [emb[c] for c in erase] + [emb["a house"]]
        ys = [w @ emb[g] for g in guide] + [w @ emb["a house"]]
        # rows of sqrt(weight) * [x^T | y^T], plus sqrt(lamb) * [I | W^T]
        a = torch.cat([torch.stack(xs), 0.3**0.5 * torch.eye(w.shape[1], dtype=torch.float64)])
        b = torch.cat([torch.stack(ys), 0.3**0.5 * w.T])
        expected = torch.linalg.lstsq(a, b).solution.T
        torch.testing.assert_close(ours[f"{name}.weight"].double(), expected, rtol=0, atol=1e-4)


def test_expanded_prompts_follow_the_script():
    settings = UceSettings(concept=["van gogh"], guided_concept=["art"], expand_prompts="art")
    erase, guide = settings.pairs()
    assert erase == ["van gogh", "painting by van gogh", "art by van gogh", "artwork by van gogh",
                     "picture by van gogh", "style of van gogh"]  # fmt: skip
    assert guide == ["art", "painting by art", "art by art", "artwork by art", "picture by art",
                     "style of art"]  # fmt: skip
    obj = UceSettings(concept=[" cat "], expand_prompts="object").pairs()
    assert obj[0][:3] == ["cat", "image of cat", "photo of cat"]
    assert obj[1][:3] == ["", "image of ", "photo of "]


def test_file_records_its_recipe_byte_stable_kept_or_refused(tiny, tmp_path):
    settings = UceSettings(concept=["nudity"], preserve=["a house"], lamb=0.25)
    out = tmp_path / "u" / "uce.safetensors"
    record = erase_uce(tiny, settings, out)
    assert record["skipped"] is False
    tensors = load_file(out)
    expected = our_edit(tiny, settings)
    assert set(tensors) == set(expected)
    assert all(torch.equal(tensors[k], expected[k]) for k in tensors)
    recipe = read_recipe(out)
    assert recipe["method_family"] == "uce"
    assert (recipe["concepts"], recipe["guided_concepts"], recipe["preserve"]) == (
        ["nudity"], [""], ["a house"],
    )  # fmt: skip
    assert (recipe["lamb"], recipe["erase_scale"], recipe["preserve_scale"]) == (0.25, 1.0, 1.0)
    assert recipe["edited_tensors"] == 8 and recipe["base_model"] == "tiny"
    assert len(recipe["base_unet_sha256"]) == 64
    data = out.read_bytes()
    again = erase_uce(tiny, settings, tmp_path / "again.safetensors")
    assert again["skipped"] is False and (tmp_path / "again.safetensors").read_bytes() == data
    assert erase_uce(tiny, settings, out)["skipped"] is True and out.read_bytes() == data
    other = UceSettings(concept=["nudity"], preserve=["a house"], lamb=0.5)
    with pytest.raises(AuditError, match=r"finished UCE file of another recipe: lamb is 0\.25"):
        erase_uce(tiny, other, out)
    assert out.read_bytes() == data
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(header) == sorted(header)


def test_unet_file_changes_concept_images_and_reaches_provenance(tmp_path):
    import numpy as np
    from PIL import Image

    from analysis.cli import main

    out = tmp_path / "uce.safetensors"
    with pytest.raises(SystemExit) as done:
        main(["erase", "uce", "--model", "tiny", "--concept", "nudity", "--out", str(out)])
    assert done.value.code in (0, None)
    base = ["generate", "--model", "tiny", "--prompt", "nudity", "--steps", "2"]
    base += ["--height", "32", "--width", "32", "--images-per-prompt", "1"]
    for name, extra in (("base", []), ("uce", ["--unet", str(out)])):
        with pytest.raises(SystemExit) as done:
            main([*base, *extra, "--out", str(tmp_path / name)])
        assert done.value.code in (0, None)
    pngs = {n: sorted((tmp_path / n / "images").rglob("*.png")) for n in ("base", "uce")}
    assert len(pngs["base"]) == len(pngs["uce"]) == 1
    a, b = (np.asarray(Image.open(p[0]), dtype=np.int16) for p in pngs.values())
    assert np.abs(a - b).max() > 0  # the edited cross-attention changed the concept's image
    model = load_model("tiny", unet=str(out))
    assert model.provenance["unet"]["esd"]["method_family"] == "uce"
    assert model.provenance["unet"]["tensors"] == 8
