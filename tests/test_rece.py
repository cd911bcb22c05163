"""RECE on the tiny model: the weights equal the authors' own RECE functions driven as their
train.py drives them, each epoch's adversarial embedding solves the paper's ridge problem, the
file records its recipe and is kept or refused, and `--unet` audits it."""

from __future__ import annotations

import copy
import hashlib
import sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from analysis.erase.rece import EMPTY_RETAIN, ReceSettings, rece_edit, train_rece
from analysis.erase.uce import edited_layers
from analysis.errors import AuditError
from analysis.generation.models import load_model
from analysis.store.weights import read_recipe

ORACLES = Path(__file__).parent / "oracles"
UCE_MARKER = "# ---- authors' file erase_methods/uce.py below ----\n"
CFE_MARKER = "# ---- authors' file utils/embedding_calculation/close_form_emb.py below ----\n"
#: sha256 of the authors' files at 403a67fd (the text below each marker)
UCE_SHA256 = "637b295a8dcb3ad926496282da03d3b60cff56c6b18f5418968bed814aca9ee4"
CFE_SHA256 = "d1943625d951fd78ec2c8b9b780312cc555ebcbf859f0a364505f4d369e2f559"
#: tests/test_uce.py's oracle: the UCE script whose checkpoint train.py starts from
UCE_SCRIPT_MARKER = "# ---- authors' file below ----\n"
UCE_SCRIPT_SHA256 = "c133789824157a9d0d2566b900be0a1b46389c76fa35c0ae35b08625b69ce8f1"


def _module(name: str, text: str, package: str | None = None) -> ModuleType:
    """`text` run as a module; grad mode is restored (the UCE script turns it off globally)."""
    module = types.ModuleType(name)
    module.__package__ = package
    grad = torch.is_grad_enabled()
    try:
        exec(compile(text, f"<{name}>", "exec"), module.__dict__)
    finally:
        torch.set_grad_enabled(grad)
    return module


@pytest.fixture(scope="module")
def authors() -> dict[str, Any]:
    """Their functions, each file's text checked against its pinned sha256."""
    rece = (ORACLES / "rece_authors.py").read_text().split(UCE_MARKER, 1)[1]
    uce_text, cfe_text = rece.split(CFE_MARKER, 1)
    script = (ORACLES / "uce_authors.py").read_text().split(UCE_SCRIPT_MARKER, 1)[1]
    for text, pinned in ((uce_text, UCE_SHA256), (cfe_text, CFE_SHA256),
                         (script, UCE_SCRIPT_SHA256)):  # fmt: skip
        assert hashlib.sha256(text.encode()).hexdigest() == pinned, "an oracle was edited"

    def no_images(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the oracle was asked to render images")

    # close_form_emb.py's `from . import embedding2img, setup_seed`: only used with a save_path
    package = types.ModuleType("rece_oracle_pkg")
    package.embedding2img = package.setup_seed = no_images  # type: ignore[attr-defined]
    package.__path__ = []  # type: ignore[attr-defined]
    sys.modules.setdefault("rece_oracle_pkg", package)
    uce_script = _module("uce_authors", script)
    uce_script.device, uce_script.torch_dtype = "cpu", torch.float32  # set by its __main__
    return {
        "UCE": uce_script.UCE,
        "edit_model_adversarial": _module("rece_uce", uce_text).edit_model_adversarial,
        "close_form_emb_regzero": _module(
            "rece_oracle_pkg.close_form_emb", cfe_text, "rece_oracle_pkg"
        ).close_form_emb_regzero,
    }


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def _pipe(tiny):
    from diffusers import StableDiffusionPipeline

    parts = dict(tiny.components())
    parts["unet"] = copy.deepcopy(parts["unet"])  # their code swaps modules in place
    return StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def _theirs(authors, tiny, tmp_path, s: ReceSettings) -> dict[str, torch.Tensor]:
    """train.py's loop on the tiny model: load the UCE checkpoint (made by the UCE authors'
    script), then per epoch, per concept, lines 252-274: the target's embedding and
    close_form_emb_regzero(ldm_stable, ldm_stable_copy, ...), then edit_model_adversarial.
    What is not driven: image validation (generate_images, NudeNet/Q16) and keeping the
    lowest-scoring epoch; save_path=None so no images are rendered."""
    ldm_stable, ldm_stable_copy = _pipe(tiny), _pipe(tiny)
    erase, guide = s.pairs()
    with torch.no_grad():
        authors["UCE"](ldm_stable, erase, guide, s.preserve, s.erase_scale, s.preserve_scale,
                       s.lamb, tmp_path, "uce")  # fmt: skip
    missing, unexpected = ldm_stable.unet.load_state_dict(
        load_file(tmp_path / "uce.safetensors"), strict=False
    )
    assert not unexpected and len(missing) > 8
    # train.py: --guided_concepts None -> ' ' per concept; --preserve_concepts None -> ' '
    new_texts = s.targets() if s.guided_concept else [" "] * len(s.concept)
    retain_texts = list(s.preserve) or [" "] * len(s.concept)
    tokenizer = ldm_stable.tokenizer
    with torch.no_grad():
        for epoch in range(s.epochs):
            adv_emb_list, new_emb_list = [], []
            for i, concept in enumerate(s.concept):
                id_new_text = tokenizer(new_texts[i], padding="max_length",
                                        max_length=tokenizer.model_max_length, truncation=True,
                                        return_tensors="pt").input_ids  # fmt: skip
                new_emb_list.append(ldm_stable.text_encoder(id_new_text)[0][0])
                _, adv_embedding = authors["close_form_emb_regzero"](
                    ldm_stable, ldm_stable_copy, concept, with_to_k=True, save_path=None,
                    regeular_scale=s.regular_scale, seed=42, save_name=f"{epoch}-{i}",
                )  # fmt: skip
                adv_emb_list.append(adv_embedding[0])
            ldm_stable = authors["edit_model_adversarial"](
                ldm_stable, adv_emb_list, new_emb_list, retain_texts, technique=s.technique,
                preserve_scale=s.preserve_scale, erase_scale=s.erase_scale, lamb=s.lamb,
            )  # fmt: skip
    params = dict(ldm_stable.unet.named_parameters())
    return {f"{n}.weight": params[f"{n}.weight"].detach() for n, _ in edited_layers(tiny.unet)}


CASES = {
    "defaults-1-epoch": {"concept": ["nudity"], "epochs": 1},
    "guided-preserved-2-epochs": {
        "concept": ["nudity", "magenta"],
        "guided_concept": ["a tree"],
        "preserve": ["a house", "a dog"],
        "epochs": 2,
        "regular_scale": 1e-3,
    },
    "tensor-scales": {
        "concept": ["blood"],
        "technique": "tensor",
        "erase_scale": 2.0,
        "preserve_scale": 0.5,
        "lamb": 0.5,
        "epochs": 2,
    },
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_weights_equal_the_authors_rece(authors, tiny, tmp_path, case):
    settings = ReceSettings(**CASES[case])
    theirs = _theirs(authors, tiny, tmp_path, settings)
    ours = rece_edit(tiny, settings)
    assert set(ours) == set(theirs) and len(ours) == 8
    from analysis.erase.uce import uce_edit

    after_uce = uce_edit(tiny, settings)
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    print(f"{case}: max |ours - authors'| = {worst:.3g}")
    for name, weight in ours.items():
        assert (weight - after_uce[name]).abs().max() > 1e-4  # the epochs moved it past UCE
        torch.testing.assert_close(weight, theirs[name], rtol=0, atol=1e-6)


def test_adversarial_embedding_solves_the_ridge_problem_in_float64(tiny):
    """Paper eq. (closed form, regularised to 0): c' = argmin sum_l |W_l c' - W0_l c|^2 +
    r |c'|^2 for each token row, solved by float64 least squares on the stacked system
    [W_1; ...; W_L; sqrt(r) I] c' = [W0_1 c; ...; W0_L c; 0] (no normal equations, no inverse)."""
    settings = ReceSettings(concept=["nudity"], epochs=2, regular_scale=0.05)
    trace: list[dict[str, Any]] = []
    rece_edit(tiny, settings, trace=trace)
    assert [t["epoch"] for t in trace] == [0, 1]
    base = {f"{n}.weight": m.weight.double() for n, m in edited_layers(tiny.unet)}
    from analysis.erase.rece import sequence_embeddings

    concept = sequence_embeddings(tiny, ["nudity"])["nudity"].double()
    for step in trace:
        current = {k: v.double() for k, v in step["weights"].items()}
        width = concept.shape[1]
        a = torch.cat([*current.values(), 0.05**0.5 * torch.eye(width, dtype=torch.float64)])
        b = torch.cat([*(base[k] @ concept.T for k in current), torch.zeros(width, 77).double()])
        expected = torch.linalg.lstsq(a, b).solution.T
        got = step["adversarial"][0].double()
        assert got.shape == (77, width)
        print(f"epoch {step['epoch']}: max |ours - lstsq| = {(got - expected).abs().max():.3g}")
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

        # and it is adversarial: under the edited weights it reproduces the original outputs
        # better than the concept itself does
        assert _miss(current, base, got, concept) < _miss(current, base, concept, concept)


def _miss(current: dict, base: dict, x: torch.Tensor, concept: torch.Tensor) -> float:
    """sum_l |W_l x - W0_l c|^2: how far the edited layers' outputs for x are from the
    original layers' outputs for the concept."""
    return sum(((current[k] @ x.T) - (base[k] @ concept.T)).norm() ** 2 for k in current).item()


def test_file_records_its_recipe_kept_or_refused(tiny, tmp_path):
    settings = ReceSettings(concept=["magenta"], preserve=["a house"], epochs=1)
    out = tmp_path / "r" / "rece.safetensors"
    record = train_rece(tiny, settings, out)
    assert record["skipped"] is False
    tensors, expected = load_file(out), rece_edit(tiny, settings)
    assert set(tensors) == set(expected) and all(
        torch.equal(tensors[k], expected[k]) for k in tensors
    )
    recipe = read_recipe(out)
    assert recipe is not None and recipe["method_family"] == "rece"
    assert (recipe["concepts"], recipe["guided_concepts"], recipe["preserve"]) == (
        ["magenta"], [""], ["a house"],
    )  # fmt: skip
    assert (recipe["epochs"], recipe["regular_scale"], recipe["technique"]) == (1, 0.1, "replace")
    assert (recipe["lamb"], recipe["erase_scale"], recipe["preserve_scale"]) == (0.1, 1.0, 0.1)
    assert recipe["adversarial_retain"] == ["a house"] and recipe["edited_tensors"] == 8
    assert recipe["recipe_source_commit"].startswith("403a67fd")
    assert len(recipe["base_unet_sha256"]) == 64 and recipe["base_model"] == "tiny"
    data = out.read_bytes()
    assert train_rece(tiny, settings, out)["skipped"] is True and out.read_bytes() == data
    with pytest.raises(AuditError, match=r"finished RECE file of another recipe: epochs is 1"):
        train_rece(tiny, ReceSettings(concept=["magenta"], preserve=["a house"], epochs=2), out)
    assert out.read_bytes() == data
    assert ReceSettings(concept=["x"]).retain() == [EMPTY_RETAIN]


def test_unet_file_changes_concept_images_and_reaches_provenance(tmp_path):
    import numpy as np
    from PIL import Image

    from analysis.cli import main

    out = tmp_path / "rece.safetensors"
    argv = ["erase", "rece", "--model", "tiny", "--concept", "nudity", "--epochs", "1"]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--out", str(out)])
    assert done.value.code in (0, None)
    assert read_recipe(out)["epochs"] == 1
    base = ["generate", "--model", "tiny", "--prompt", "nudity", "--steps", "2"]
    base += ["--height", "32", "--width", "32", "--images-per-prompt", "1"]
    for name, extra in (("base", []), ("rece", ["--unet", str(out)])):
        with pytest.raises(SystemExit) as done:
            main([*base, *extra, "--out", str(tmp_path / name)])
        assert done.value.code in (0, None)
    pngs = {n: sorted((tmp_path / n / "images").rglob("*.png")) for n in ("base", "rece")}
    assert len(pngs["base"]) == len(pngs["rece"]) == 1
    a, b = (np.asarray(Image.open(p[0]), dtype=np.int16) for p in pngs.values())
    assert np.abs(a - b).max() > 0  # the edited cross-attention changed the concept's image
    model = load_model("tiny", unet=str(out))
    assert model.provenance["unet"]["esd"]["method_family"] == "rece"
    assert model.provenance["unet"]["tensors"] == 8
