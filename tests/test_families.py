"""SD 2.x (v-prediction) and SDXL in our sampler, against diffusers on the tiny models.

Oracles: StableDiffusionPipeline (tiny-sd2) and StableDiffusionXLPipeline (tiny-sdxl) for SD and
the negative prompt; for SLD a hand-written loop over diffusers' own conditioning (encode_prompt,
_get_add_time_ids, prepare_latents) and `sld_noise_guidance`, so what is tested is our family
conditioning; SLD's momentum checked against its recurrence computed by hand at every step.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from analysis.errors import AuditError
from analysis.generation import SamplingParams, load_model, sample
from analysis.generation.families import default_size, default_size_for, guess_family
from analysis.generation.runner import build_spec
from analysis.guidance import DEFAULT_SAFETY_CONCEPT, resolve_config, sld_noise_guidance

PROMPTS = ["japanese body", "a photo of a cat"]
SEEDS = [3, 11]
PARAMS = SamplingParams(steps=4, guidance_scale=7.5, height=64, width=64)
FIXED3 = SamplingParams(steps=3, guidance_scale=7.5, height=64, width=64, batch_size=3)
ATOL = 1e-5


@pytest.fixture(scope="module")
def sd2():
    return load_model("tiny-sd2")


@pytest.fixture(scope="module")
def sdxl():
    return load_model("tiny-sdxl")


def _gens(seeds=SEEDS):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _common():
    return {
        "num_inference_steps": PARAMS.steps,
        "guidance_scale": PARAMS.guidance_scale,
        "height": PARAMS.height,
        "width": PARAMS.width,
        "output_type": "latent",
    }


def _pipe(model):
    if model.family == "sdxl":
        pipe = StableDiffusionXLPipeline(**model.components(), force_zeros_for_empty_prompt=True)
    else:
        pipe = StableDiffusionPipeline(
            **model.components(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours(model, name, prompts=PROMPTS, seeds=SEEDS, params=PARAMS, on_step=None):
    config = resolve_config(name)
    return sample(model, prompts, seeds, config, params, output_type="latent", on_step=on_step)


@pytest.mark.parametrize("which", ["sd2", "sdxl"])
@pytest.mark.parametrize("negative", [False, True])
def test_sd_and_negative_match_the_diffusers_pipeline(request, which, negative) -> None:
    model = request.getfixturevalue(which)
    ours = _ours(model, "negative" if negative else "sd")
    neg = [DEFAULT_SAFETY_CONCEPT] * len(PROMPTS) if negative else None
    ref = _pipe(model)(PROMPTS, negative_prompt=neg, generator=_gens(), **_common()).images
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert (ours - _ours(model, "negative" if not negative else "sd")).abs().max() > 1e-2


def test_sd2_is_v_prediction_and_recorded(sd2) -> None:
    assert sd2.family == "sd2" and sd2.scheduler.config.prediction_type == "v_prediction"
    assert sd2.provenance["family"] == "sd2"
    assert sd2.provenance["prediction_type"] == "v_prediction"
    assert sd2.text_encoder.config.hidden_act == "gelu"
    # the same weights read as epsilon give other latents: the scheduler does use the v target
    eps = copy.copy(sd2)
    eps.scheduler = type(sd2.scheduler).from_config(sd2.scheduler.config, prediction_type="epsilon")
    assert (_ours(sd2, "sd") - _ours(eps, "sd")).abs().max() > 1e-2


def _reference_sld(model, config, prompts=PROMPTS, seeds=SEEDS):
    """SLD over diffusers' own conditioning and latents; returns (latents, momenta by step)."""
    pipe, p, n = _pipe(model), config.sld, len(prompts)
    h, w, dev = PARAMS.height, PARAMS.width, model.device
    concept = [config.safety_concept] * n
    if model.family == "sdxl":
        pe, npe, pooled, npooled = pipe.encode_prompt(prompts, device=dev)
        ce, _, cpooled, _ = pipe.encode_prompt(
            concept, device=dev, do_classifier_free_guidance=False
        )
        ids = pipe._get_add_time_ids(
            (h, w), (0, 0), (h, w), pe.dtype, model.text_encoder_2.config.projection_dim
        )
        added = {
            "text_embeds": torch.cat([npooled, pooled, cpooled]),
            "time_ids": ids.repeat(3 * n, 1),
        }
    else:
        pe, npe = pipe.encode_prompt(prompts, dev, 1, True)
        ce, _ = pipe.encode_prompt(concept, dev, 1, False)
        added = None
    embeds = torch.cat([npe, pe, ce])
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(PARAMS.steps, device=dev)
    latents = pipe.prepare_latents(n, 4, h, w, embeds.dtype, dev, _gens(seeds))
    momentum, nu, momenta, resets = None, torch.zeros_like(latents), [], []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(torch.cat([latents] * 3), t)
        out = model.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        e_u, e_p, e_s = out.chunk(3)
        guided, momentum = sld_noise_guidance(e_u, e_p, e_s, momentum, i, p)
        # the momentum recurrence by hand: nu_{i+1} = beta nu_i + (1 - beta) gamma_i
        d = e_p - e_s
        mu = torch.where(d >= p.threshold, 0.0, (d.abs() * p.sld_guidance_scale).clamp(max=1))
        gamma = mu * (e_s - e_u) + p.momentum_scale * nu
        nu = p.momentum_beta * nu + (1 - p.momentum_beta) * gamma
        momenta.append(nu)
        resets.append((1 - p.momentum_beta) * mu * (e_s - e_u))  # the bug: nu reset every step
        latents = scheduler.step(e_u + PARAMS.guidance_scale * guided, t, latents).prev_sample
    return latents, momenta, resets


@pytest.mark.parametrize("which", ["sd2", "sdxl"])
@pytest.mark.parametrize("preset", ["sld-strong:warmup_steps=1", "sld-max"])
def test_sld_matches_a_reference_loop_and_momentum_accumulates(request, which, preset) -> None:
    model = request.getfixturevalue(which)
    config = resolve_config(preset)
    seen: dict[int, torch.Tensor] = {}
    ours = _ours(model, preset, on_step=lambda i, s: seen.__setitem__(i, s["momentum"].clone()))
    ref, momenta, resets = _reference_sld(model, config)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert len(seen) == len(momenta) == PARAMS.steps
    for k, nu in enumerate(momenta):
        torch.testing.assert_close(seen[k], nu, atol=ATOL, rtol=0)
    # carried across steps: from step 1 on it is not what a reset to zero would give
    torch.testing.assert_close(seen[0], resets[0], atol=ATOL, rtol=0)
    for k in range(1, PARAMS.steps):
        assert (seen[k] - resets[k]).abs().max() > 1e-3, f"momentum reset at step {k}"
    assert (ours - _ours(model, "sd")).abs().max() > 1e-2, "SLD must act within the steps"


@pytest.mark.parametrize("which", ["sd2", "sdxl"])
@pytest.mark.parametrize("name", ["sd", "sld-strong:warmup_steps=1"])
def test_fixed_shape_batch_invariance(request, which, name) -> None:
    """Same B: an image is bit-identical alone (padded) and among other prompts."""
    model = request.getfixturevalue(which)
    prompts, seeds = ["kenyan body", "a red car", "thai body"], [0, 1, 2]
    batch = _ours(model, name, prompts, seeds, FIXED3)
    alone = _ours(model, name, prompts[2:], seeds[2:], FIXED3)
    assert torch.equal(batch[2:], alone)
    others = _ours(model, name, ["x", prompts[2], "y"], [7, seeds[2], 8], FIXED3)
    assert torch.equal(others[1:2], alone)


def test_sdxl_empty_unconditional_is_zeros_and_respects_the_flag(sdxl) -> None:
    """force_zeros_for_empty_prompt=False: diffusers encodes "" instead; so do we."""
    encoded = copy.copy(sdxl)
    encoded.force_zeros_for_empty_prompt = False
    ours = _ours(encoded, "sd")
    pipe = StableDiffusionXLPipeline(**sdxl.components(), force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPTS, generator=_gens(), **_common()).images
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert (ours - _ours(sdxl, "sd")).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("name", "family", "prediction", "side"),
    [("tiny", "sd1", "epsilon", 512), ("tiny-sd2", "sd2", "v_prediction", 768),
     ("tiny-sdxl", "sdxl", "epsilon", 1024)],
)  # fmt: skip
def test_saved_folders_are_recognised_with_their_default_size(
    request, tmp_path, name, family, prediction, side
) -> None:
    model = load_model(name) if name == "tiny" else request.getfixturevalue(name[5:])
    _pipe(model).save_pretrained(tmp_path)
    assert guess_family(str(tmp_path)) == (family, prediction)
    assert default_size_for(str(tmp_path)) == side == default_size(family, prediction)
    loaded = load_model(str(tmp_path))
    assert (loaded.family, loaded.provenance["family"]) == (family, family)
    assert loaded.provenance["prediction_type"] == prediction
    spec = build_spec(
        model=str(tmp_path), configs=["sd"], prompts=[{"prompt_id": "a", "prompt": "x"}]
    )
    assert (spec.height, spec.width) == (side, side)
    if family != "sd1":  # the folder's components sample exactly as the builtin's
        a = _ours(model, "sd", PROMPTS[:1], SEEDS[:1])
        assert torch.equal(a, _ours(loaded, "sd", PROMPTS[:1], SEEDS[:1]))


def test_default_sizes_follow_the_family_unless_set() -> None:
    prompts = [{"prompt_id": "a", "prompt": "x"}]
    sizes = {m: build_spec(model=m, configs=["sd"], prompts=prompts).height for m in
             ("tiny", "sd1-arch", "tiny-sd2", "sd2-arch", "tiny-sdxl", "sdxl-arch")}  # fmt: skip
    assert sizes == {"tiny": 512, "sd1-arch": 512, "tiny-sd2": 768, "sd2-arch": 768,
                     "tiny-sdxl": 1024, "sdxl-arch": 1024}  # fmt: skip
    assert default_size("sd2", "epsilon") == 512  # SD 2 base
    spec = build_spec(model="tiny-sdxl", configs=["sd"], prompts=prompts, height=64, width=96)
    assert (spec.height, spec.width) == (64, 96)


def test_a_refiner_is_refused_with_a_clear_error(tmp_path) -> None:
    index = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "text_encoder": [None, None],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "requires_aesthetics_score": True,
    }
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(AuditError, match="SDXL refiner"):
        load_model(str(tmp_path))
    assert guess_family(str(tmp_path)) is None


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
         (320, 768), ("sd1", "epsilon")),
        ("model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
         (320, 1024), ("sd2", "v_prediction")),
        ("conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
         (1280,), ("sdxl", "epsilon")),
        ("conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias", (1280,), None),
        ("edm_mean", (4,), None),
    ],
)  # fmt: skip
def test_single_files_are_told_apart_by_their_keys(tmp_path, key, shape, expected) -> None:
    """diffusers' own key test on a checkpoint's header; refiners and others are refused."""
    from safetensors.torch import save_file

    from analysis.generation.families import single_file_family

    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(shape)}, str(path))
    assert guess_family(str(path)) == expected
    if expected is None:
        with pytest.raises(AuditError, match=r"refiner|only text-to-image"):
            single_file_family(path)
    else:
        assert default_size_for(str(path)) == default_size(*expected)


def test_the_run_manifest_records_family_and_prediction_type(sd2, tmp_path) -> None:
    from analysis.generation.runner import run_generation
    from analysis.store import RunDir

    spec = build_spec(
        model="tiny-sd2", configs=["sd"], prompts=[{"prompt_id": "a", "prompt": "a cat"}],
        steps=2, height=64, width=64, batch_size=1,
    )  # fmt: skip
    summary = run_generation(spec, tmp_path / "run", progress=False, model=sd2)
    assert summary["generated"] == 1
    recorded = RunDir(tmp_path / "run").read_manifest()["model"]
    assert (recorded["family"], recorded["prediction_type"]) == ("sd2", "v_prediction")
