"""--compile: part of the spec and item ids, checked against eager, refused when it differs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.errors import AuditError
from analysis.generation.runner import build_spec, plan_items, run_generation


def _spec(**over):
    base = {
        "model": "tiny",
        "configs": ["sd", "sld-max"],
        "prompts": [{"prompt_id": "a", "prompt": "a cat", "base_seed": 3}],
        "images_per_prompt": 2,
        "steps": 2,
        "height": 32,
        "width": 32,
        "batch_size": 2,
    }
    return build_spec(**{**base, **over})


def test_compile_is_part_of_the_spec_and_ids_but_eager_specs_are_unchanged() -> None:
    eager, compiled = _spec(), _spec(compile=True)
    assert "compile" not in eager.canonical()  # runs made before the option keep their hash
    assert compiled.canonical()["compile"] is True
    assert eager.spec_hash() != compiled.spec_hash()
    assert not set(plan_items(eager)["item_id"]) & set(plan_items(compiled)["item_id"])


def test_a_compiled_run_is_checked_against_eager_and_recorded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("T2I_AUDIT_COMPILE_BACKEND", "aot_eager")  # seconds, no C++ build
    run_generation(_spec(), tmp_path / "eager", progress=False)
    run_generation(_spec(compile=True), tmp_path / "compiled", progress=False)
    record = json.loads((tmp_path / "compiled" / "manifest.json").read_text())["compile"]
    assert record["backend"] == "aot_eager" and record["tolerance"] == 1e-3
    assert 0 <= record["max_abs_diff_vs_eager"] <= 1e-3
    for png in sorted((tmp_path / "eager" / "images").rglob("*.png")):
        other = tmp_path / "compiled" / png.relative_to(tmp_path / "eager")
        a = np.asarray(Image.open(png), dtype=int)
        b = np.asarray(Image.open(other), dtype=int)
        assert np.abs(a - b).max() <= 1  # the same image up to the last bits


def test_a_compiled_unet_that_differs_or_fails_is_refused(tmp_path, monkeypatch) -> None:
    import analysis.generation.compiled as compiled

    monkeypatch.setenv("T2I_AUDIT_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setitem(compiled.TOLERANCE, "float32", -1.0)  # any difference is too much
    with pytest.raises(AuditError, match="differs from eager"):
        run_generation(_spec(compile=True), tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "manifest.json").exists()  # the folder is not claimed

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nfound")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(
        AuditError, match=r"--compile failed \(aot_eager\): no C\+\+ compiler found"
    ):
        run_generation(_spec(compile=True), tmp_path / "b", progress=False)
