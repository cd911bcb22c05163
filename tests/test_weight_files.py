"""Released erased models in their authors' formats: each format, written by a tiny model, loads.

Oracles: the loaded module's weights equal the tensors written (bit for bit); the LDM key table
equals diffusers' own `convert_ldm_unet_checkpoint` and the ESD authors' convertModels.py on
full checkpoints; a fused LoRA equals W + scale * (alpha / r) * B @ A computed here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from analysis.cli import main
from analysis.errors import AuditError
from analysis.generation.models import load_model
from analysis.generation.tiny import BUILDERS, tiny_components
from analysis.generation.weight_files import ldm_unet_names

ORACLE = Path(__file__).parent / "oracles" / "esd_convert_models.py"
AUTHORS_SHA256 = "3dd3810b3ec9bb9e6f05243befb32e1d3edd7d672ae13589b6e9214f35111afa"
ESD_X = ("attn2.to_k", "attn2.to_v")


def _authors_converter() -> Any:
    """The ESD authors' convert_ldm_unet_checkpoint, run as written (its imports need
    omegaconf and diffusers pipelines that are not installed: only its UNet functions run)."""
    text = ORACLE.read_text()
    body = text.split("# ---- authors' file below ----\n", 1)[1]
    assert hashlib.sha256(body.encode()).hexdigest() == AUTHORS_SHA256, "the oracle was edited"
    wanted = {
        "shave_segments",
        "renew_resnet_paths",
        "renew_attention_paths",
        "assign_to_checkpoint",
        "convert_ldm_unet_checkpoint",
    }
    tree = ast.parse(body)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    space: dict[str, Any] = {"torch": torch}
    exec(compile(tree, str(ORACLE), "exec"), space)
    return space["convert_ldm_unet_checkpoint"]


def _changed(module: Any, only: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The module's weights, shifted by a distinct amount per tensor (the released 'erasure')."""
    out = {}
    for i, (k, v) in enumerate(module.state_dict().items()):
        if not only or any(part in k for part in only):
            out[k] = (v + 0.01 * (i + 1)).contiguous()
    return out


def _to_ldm(state: dict[str, torch.Tensor], unet: Any) -> dict[str, torch.Tensor]:
    names = {d: ldm for ldm, d in ldm_unet_names(unet.state_dict().keys()).items()}
    return {f"model.diffusion_model.{names[k]}": v for k, v in state.items()}


def _assert_loaded(model: Any, part: str, expected: dict[str, torch.Tensor]) -> None:
    now = getattr(model, part).state_dict()
    for k, v in expected.items():
        assert torch.equal(now[k], v), k


@pytest.mark.parametrize("family", ["tiny", "tiny-sd2", "tiny-sdxl"])
def test_ldm_table_equals_diffusers_converter(family: str) -> None:
    """Every key maps, and diffusers' converter reads the LDM dict back to the same tensors."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = BUILDERS[family]()["unet"]
    state = unet.state_dict()
    ldm = _to_ldm(state, unet)
    assert len(ldm) == len(state)
    back = convert_ldm_unet_checkpoint(dict(ldm), dict(unet.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_ldm_table_equals_esd_authors_converter() -> None:
    unet = tiny_components()["unet"]
    state = unet.state_dict()
    back = _authors_converter()(dict(_to_ldm(state, unet)), dict(unet.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_partial_ldm_file_loads_every_tensor(tmp_path: Path) -> None:
    """ESD-x's attn2 to_k/to_v only: diffusers' converter keeps half of them (it counts blocks
    from the keys present); every tensor of the file must load."""
    unet = tiny_components()["unet"]
    partial = _changed(unet, ESD_X)
    path = tmp_path / "esd-x.safetensors"
    save_file(_to_ldm(partial, unet), str(path))
    model = load_model("tiny", unet=str(path))
    _assert_loaded(model, "unet", partial)
    info = model.provenance["unet"]
    assert info["key_naming"] == "CompVis/LDM" and info["tensors"] == len(partial) == 8
    assert info["coverage"] == f"partial (8 of {len(unet.state_dict())})"


def test_full_ldm_ckpt_with_vae_and_text_encoder(tmp_path: Path) -> None:
    """ESD's train-esd.py: torch.save({'state_dict': model.state_dict()}) of the whole LDM."""
    parts = tiny_components()
    full = _changed(parts["unet"])
    ckpt = _to_ldm(full, parts["unet"])
    ckpt.update({f"first_stage_model.{k}": v for k, v in parts["vae"].state_dict().items()})
    te = parts["text_encoder"].state_dict()
    ckpt.update({f"cond_stage_model.transformer.text_model.{k}": v for k, v in te.items()})
    ckpt["betas"] = torch.linspace(0, 1, 10)
    path = tmp_path / "esd.ckpt"
    torch.save({"state_dict": ckpt, "global_step": 7}, path)
    model = load_model("tiny", unet=str(path))
    _assert_loaded(model, "unet", full)
    info = model.provenance["unet"]
    assert info["coverage"] == "full" and info["container"] == "state_dict"
    assert info["dropped"] == {
        "betas": 1,
        "cond_stage_model": len(te),
        "first_stage_model": len(parts["vae"].state_dict()),
    }
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("partial", [False, True])
def test_diffusers_named_files(tmp_path: Path, suffix: str, partial: bool) -> None:
    """Full or partial `unet.state_dict()`, via safetensors or torch.save (ESD diffusers-era)."""
    unet = tiny_components()["unet"]
    state = _changed(unet, ESD_X if partial else ())
    path = tmp_path / f"u{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = load_model("tiny", unet=str(path))
    _assert_loaded(model, "unet", state)
    assert model.provenance["unet"]["key_naming"] == "diffusers"
    assert model.provenance["unet"]["format"].startswith(
        "safetensors" if suffix == ".safetensors" else "torch pickle"
    )


def test_another_architecture_names_key_and_shapes(tmp_path: Path) -> None:
    sdxl = _changed(BUILDERS["tiny-sdxl"]()["unet"], ("attn2.to_k",))
    path = tmp_path / "xl.safetensors"
    save_file(sdxl, str(path))
    with pytest.raises(AuditError, match=r"another architecture: tensor 'down_blocks\.1\.atte"):
        load_model("tiny", unet=str(path))
    with pytest.raises(AuditError, match=r"is \(64, 64\) there, \(64, 32\) in this model.s UNet"):
        load_model("tiny", unet=str(path))


def test_text_encoder_files(tmp_path: Path) -> None:
    """A transformers folder, a transformers-4-named .bin (text_model.* + position_ids) and a
    partial .safetensors all load; another width is refused naming the key and shapes."""
    te = tiny_components()["text_encoder"]
    state = _changed(te)
    te.load_state_dict(state)
    te.save_pretrained(tmp_path / "folder")
    old = {f"text_model.{k}": v for k, v in state.items()}
    old["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(old, tmp_path / "te.bin")
    part = {k: v for k, v in state.items() if "layers.0." in k}
    save_file(part, str(tmp_path / "part.safetensors"))
    for name, expected in [("folder", state), ("te.bin", state), ("part.safetensors", part)]:
        model = load_model("tiny", text_encoder=str(tmp_path / name))
        _assert_loaded(model, "text_encoder", expected)
    wide = {k: torch.zeros(64, 64) for k in state if k.endswith("q_proj.weight")}
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(AuditError, match=r"q_proj\.weight' is \(64, 64\) there, \(32, 32\)"):
        load_model("tiny", text_encoder=str(tmp_path / "wide.safetensors"))


def _write_lora(
    folder: Path, r: int = 2, alpha: int = 4, base: str = "tiny", text: bool = False
) -> tuple[dict, dict]:
    """A peft LoRA on the tiny UNet (and text encoder), random non-zero B, saved as diffusers
    saves it (`save_lora_weights` with the adapters' configs as metadata)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(0)
    parts = BUILDERS[base]()
    targets = {"unet": ["to_k", "to_v"], "text_encoder": ["q_proj", "v_proj"]}
    saved: dict[str, Any] = {}
    for name in ["unet", "text_encoder"] if text else ["unet"]:
        module = parts[name]
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets[name])
        module = inject_adapter_in_model(config, module)  # transformers' add_adapter: peft>=0.22
        with torch.no_grad():
            for key, p in module.named_parameters():
                if "lora_B" in key:
                    p.normal_()
        saved[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(module)
        )
        saved[f"{name}_lora_adapter_metadata"] = config.to_dict()
    StableDiffusionPipeline.save_lora_weights(folder, **saved)
    return saved["unet_lora_layers"], saved.get("text_encoder_lora_layers", {})


def test_lora_fuses_by_hand(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    unet_layers, text_layers = _write_lora(tmp_path / "lora", r=2, alpha=4, text=True)
    base = load_model("tiny")
    model = load_model("tiny", lora=str(tmp_path / "lora"), lora_scale=0.5)
    for part, layers in [("unet", unet_layers), ("text_encoder", text_layers)]:
        before = getattr(base, part).state_dict()
        now = getattr(model, part).state_dict()
        assert not any("lora" in k for k in now)
        fused = 0
        for key, down in layers.items():
            down_name = re.search(r"\.(lora_A|lora\.down|lora_linear_layer\.down)\.weight$", key)
            if down_name is None:
                continue
            up = layers[
                key[: down_name.start()]
                + down_name.group(0).replace("A", "B").replace("down", "up")
            ]
            weight = key[: down_name.start()] + ".weight"
            weight = weight.removeprefix("text_model.") if weight not in before else weight
            expected = before[weight] + 0.5 * (4 / 2) * up @ down
            torch.testing.assert_close(now[weight], expected, rtol=0, atol=1e-6)
            fused += 1
        assert fused == model.provenance["lora"]["modules"][part] > 0
    assert model.provenance["lora"]["modules"]["unet"] == 16  # to_k, to_v of 8 attentions
    assert model.provenance["lora"]["scale"] == 0.5


def test_lora_for_another_base_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    _write_lora(tmp_path / "xl", base="tiny-sdxl")
    with pytest.raises(AuditError, match=r"--lora .* another base: tensor '.*to_k.*' is \(2, 64\)"):
        load_model("tiny", lora=str(tmp_path / "xl"))


def test_cli_records_every_file_and_keeps_old_ids(tmp_path: Path) -> None:
    """--unet (LDM .ckpt), --text-encoder and --lora through `generate`: the manifest names each
    file, its sha256, format and what it loaded over; a run without them keeps its item ids."""
    pytest.importorskip("peft")
    parts = tiny_components()
    ckpt = tmp_path / "esd.ckpt"
    torch.save({"state_dict": _to_ldm(_changed(parts["unet"], ESD_X), parts["unet"])}, ckpt)
    te = tmp_path / "te.safetensors"
    save_file(_changed(parts["text_encoder"], ("layers.0.",)), str(te))
    _write_lora(tmp_path / "lora")
    gen = ["generate", "--prompt", "a", "--steps", "1", "--height", "32", "--width", "32"]
    files = ["--unet", str(ckpt), "--text-encoder", str(te), "--lora", str(tmp_path / "lora")]
    with pytest.raises(SystemExit) as done:
        main([*gen, "--out", str(tmp_path / "run"), *files, "--lora-scale", "0.5"])
    assert done.value.code == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    text = json.dumps(manifest)
    for path in (ckpt, te):
        assert hashlib.sha256(path.read_bytes()).hexdigest() in text
    lora_file = hashlib.sha256(
        (tmp_path / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    )
    folder = f"pytorch_lora_weights.safetensors:{lora_file.hexdigest()}\n"  # a folder's hash
    assert manifest["spec"]["lora_sha256"] == hashlib.sha256(folder.encode()).hexdigest()
    assert '"key_naming": "CompVis/LDM"' in text and '"loaded_over": "tiny"' in text
    assert '"scale": 0.5' in text
    from analysis.generation.runner import _canonical_json, build_spec, item_id

    spec = build_spec(model="tiny", configs=["sd"], prompts=[{"prompt_id": "a", "prompt": "a"}])
    assert "lora" not in spec.canonical() and "text_encoder" not in spec.canonical()
    old_key = {  # item_id's key before these options existed
        "model": "tiny",
        "unet": None,
        "revision": None,
        "scheduler": None,
        "config": json.loads(spec.configs[0].model_dump_json()),
        "prompt": "a",
        "seed": 0,
        "image_index": 0,
        "steps": 50,
        "guidance_scale": 7.5,
        "height": 512,  # the size the spec fixes when none is given
        "width": 512,
        "dtype": "float32",
        "engine": "fixed-shape",
        "batch_size": 4,
    }
    old = hashlib.sha256(_canonical_json(old_key).encode()).hexdigest()[:20]
    assert item_id(spec, spec.configs[0], spec.prompts[0], 0) == old
    with_lora = spec.model_copy(update={"lora": "x", "lora_sha256": "0" * 64})
    assert item_id(with_lora, spec.configs[0], spec.prompts[0], 0) != old


def test_audit_file_model_entry_takes_the_files(tmp_path: Path) -> None:
    """`text_encoder`, `lora`, `lora_scale` in [[models]] reach the spec, hashed."""
    from analysis.audit import load_audit
    from analysis.audit.plan import probe_spec

    te = tmp_path / "te.safetensors"
    save_file(_changed(tiny_components()["text_encoder"], ("layers.0.",)), str(te))
    demo = (Path(__file__).parent / "data" / "tiny-audit.toml").read_text()
    entry = f'model = "tiny"\ntext_encoder = "{te}"\nlora = "{te}"\nlora_scale = 0.25\n'
    path = tmp_path / "audit.toml"
    path.write_text(demo.replace('model = "tiny"\n', entry, 1))
    audit = load_audit(path)
    spec = probe_spec(audit, audit.models[0])
    digest = hashlib.sha256(te.read_bytes()).hexdigest()
    assert spec.text_encoder_sha256 == digest == spec.lora_sha256 and spec.lora_scale == 0.25


def test_lora_without_peft_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import sys

    from analysis.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 't2i-audit\[lora\]'"):
        load_model("tiny", lora=str(tmp_path))


def test_unet_folder_and_merged_pipeline_folder(tmp_path: Path) -> None:
    """A `save_pretrained` UNet folder, and a merged model's pipeline folder (its unet/)."""
    unet = tiny_components()["unet"]
    state = _changed(unet)
    unet.load_state_dict(state)
    unet.save_pretrained(tmp_path / "unet-only")
    unet.save_pretrained(tmp_path / "merged" / "unet")
    for folder in ("unet-only", "merged"):
        model = load_model("tiny", unet=str(tmp_path / folder))
        _assert_loaded(model, "unet", state)
        assert model.provenance["unet"]["coverage"] == "full"
