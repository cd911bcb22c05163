"""Our sampler against diffusers' own pipelines on the tiny model: same seeds, same latents."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

from analysis.generation import SamplingParams, load_model, sample
from analysis.guidance import DEFAULT_SAFETY_CONCEPT, resolve_config

PROMPTS = ["japanese body", "nigerian body", "a photo of a cat"]
SEEDS = [3, 4, 11]
# B = the number of prompts: one call on the batch, exactly as diffusers does. B = 1 equals
# diffusers run one image at a time; B = 8 pads short batches (fixed-shape invariance below).
PARAMS = SamplingParams(steps=5, guidance_scale=7.5, height=64, width=64)
ALONE = SamplingParams(steps=5, guidance_scale=7.5, height=64, width=64, batch_size=1)
FIXED8 = SamplingParams(steps=5, guidance_scale=7.5, height=64, width=64, batch_size=8)
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


def _gens(seeds=SEEDS):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _common():
    return {
        "num_inference_steps": PARAMS.steps,
        "guidance_scale": PARAMS.guidance_scale,
        "height": PARAMS.height,
        "width": PARAMS.width,
    }


def _sd_pipe(model):
    pipe = StableDiffusionPipeline(
        **model.components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _safe_latents(model, config, prompts=PROMPTS, seeds=SEEDS) -> torch.Tensor:
    pipe = StableDiffusionPipelineSafe(
        **model.components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    captured = {}
    p = config.sld
    pipe(
        prompts,
        generator=_gens(seeds),
        callback=lambda i, t, latents: captured.__setitem__("latents", latents.clone()),
        callback_steps=1,
        output_type="np",
        sld_guidance_scale=p.sld_guidance_scale,
        sld_warmup_steps=p.warmup_steps,
        sld_threshold=p.threshold,
        sld_momentum_scale=p.momentum_scale,
        sld_mom_beta=p.momentum_beta,
        **_common(),
    )
    return captured["latents"]


@pytest.mark.parametrize("preset", ["sld-weak", "sld-weak-paper", "sld-medium", "sld-strong"])
@pytest.mark.parametrize("warmup", [1, 3])
def test_sld_presets_match_the_reference_pipeline(model, preset: str, warmup: int) -> None:
    config = resolve_config(f"{preset}:warmup_steps={warmup}")
    ours = sample(model, PROMPTS, SEEDS, config, PARAMS, output_type="latent")
    ref = _safe_latents(model, config)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    plain = sample(model, PROMPTS, SEEDS, resolve_config("sd"), PARAMS, output_type="latent")
    assert (ours - plain).abs().max() > 1e-2, "guidance must act within the test's steps"


@pytest.mark.parametrize("preset", ["sd", "sld-medium:warmup_steps=1", "sld-max", "negative"])
def test_batch_of_one_matches_reference_run_one_image_at_a_time(model, preset: str) -> None:
    config = resolve_config(preset)
    ours = torch.cat(
        [
            sample(model, [p], [s], config, ALONE, output_type="latent")
            for p, s in zip(PROMPTS, SEEDS, strict=True)
        ]
    )
    for k, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS, strict=True)):
        if config.kind == "sld":
            ref = _safe_latents(model, config, [prompt], [seed])
        else:
            neg = [DEFAULT_SAFETY_CONCEPT] if config.kind == "negative" else None
            ref = _sd_pipe(model)(
                [prompt],
                negative_prompt=neg,
                generator=_gens([seed]),
                output_type="latent",
                **_common(),
            ).images
        torch.testing.assert_close(ours[k : k + 1], ref, atol=ATOL, rtol=0)


def test_sld_max_unscaled_matches_reference(model) -> None:
    config = resolve_config("sld-max")  # warm-up 0: acts from the first step as published
    ours = sample(model, PROMPTS, SEEDS, config, PARAMS, output_type="latent")
    torch.testing.assert_close(ours, _safe_latents(model, config), atol=ATOL, rtol=0)


def test_sd_matches_stable_diffusion_pipeline(model) -> None:
    ours = sample(model, PROMPTS, SEEDS, resolve_config("sd"), PARAMS, output_type="latent")
    ref = _sd_pipe(model)(PROMPTS, generator=_gens(), output_type="latent", **_common()).images
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_sd_images_match_pipeline_pixels(model) -> None:
    ours = sample(model, PROMPTS[:2], SEEDS[:2], resolve_config("sd"), PARAMS)
    ref = _sd_pipe(model)(PROMPTS[:2], generator=_gens(SEEDS[:2]), output_type="pil", **_common())
    for a, b in zip(ours, ref.images, strict=True):
        assert a.size == (64, 64)
        diff = torch.tensor(list(a.getdata())) - torch.tensor(list(b.getdata()))
        assert diff.abs().max() <= 1


def test_negative_matches_negative_prompt(model) -> None:
    ours = sample(model, PROMPTS, SEEDS, resolve_config("negative"), PARAMS, output_type="latent")
    ref = _sd_pipe(model)(
        PROMPTS,
        negative_prompt=[DEFAULT_SAFETY_CONCEPT] * len(PROMPTS),
        generator=_gens(),
        output_type="latent",
        **_common(),
    ).images
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_sld_with_guidance_off_equals_sd(model) -> None:
    off = resolve_config("sld-strong:sld_guidance_scale=0")
    ours = sample(model, PROMPTS, SEEDS, off, PARAMS, output_type="latent")
    sd = sample(model, PROMPTS, SEEDS, resolve_config("sd"), PARAMS, output_type="latent")
    torch.testing.assert_close(ours, sd, atol=0, rtol=0)


def test_fixed_shape_makes_an_image_independent_of_its_batch(model) -> None:
    """Same B: an image is bit-identical alone (padded), in any company and at any position."""
    prompts = [f"{c} body" for c in ("japanese", "kenyan", "french", "thai")] * 2
    seeds = [0, 1, 2, 3, 10, 11, 12, 13]
    for name in ("sd", "sld-strong:warmup_steps=1", "sld-max"):
        config = resolve_config(name)
        batch = sample(model, prompts, seeds, config, FIXED8, output_type="latent")
        reverse = sample(model, prompts[::-1], seeds[::-1], config, FIXED8, output_type="latent")
        assert torch.equal(batch, reverse.flip(0)), f"{name}: position in the batch matters"
        for k in (0, 5, 7):
            alone = sample(model, [prompts[k]], [seeds[k]], config, FIXED8, output_type="latent")
            assert torch.equal(batch[k : k + 1], alone), f"{name}: image {k} depends on its batch"
        others = sample(
            model, [prompts[5], "a red car", "a tree"], [seeds[5], 99, 98], config, FIXED8,
            output_type="latent",
        )  # fmt: skip
        assert torch.equal(others[:1], batch[5:6]), f"{name}: other rows changed image 5"


def test_a_different_batch_shape_is_a_different_run(model) -> None:
    """Why B is part of the spec: the call shape moves the last bits (SLD amplifies them)."""
    config = resolve_config("sld-max")
    b8 = sample(model, PROMPTS[:1], SEEDS[:1], config, FIXED8, output_type="latent")
    b1 = sample(model, PROMPTS[:1], SEEDS[:1], config, ALONE, output_type="latent")
    torch.testing.assert_close(b8, b1, atol=1e-2, rtol=0)  # the same image up to rounding ...
    from analysis.errors import AuditError

    with pytest.raises(AuditError, match="do not fit the batch size 1"):
        sample(model, PROMPTS, SEEDS, config, ALONE)


def test_stochastic_scheduler_is_per_image_too(model) -> None:
    ddpm = load_model("tiny", scheduler="DDPMScheduler")
    prompts, seeds = PROMPTS, SEEDS
    solo = sample(ddpm, prompts, seeds, resolve_config("sd"), FIXED8, output_type="latent")
    alone = sample(ddpm, prompts[2:], seeds[2:], resolve_config("sd"), FIXED8, output_type="latent")
    assert torch.equal(solo[2:], alone)
    batch = sample(ddpm, prompts, seeds, resolve_config("sd"), PARAMS, output_type="latent")
    ref = StableDiffusionPipeline(
        **ddpm.components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    out = ref(prompts, generator=_gens(), output_type="latent", **_common()).images
    torch.testing.assert_close(batch, out, atol=ATOL, rtol=0)


# SD 2.x and SDXL against code that shares nothing with ours: SD 2.x (v-prediction, one CLIP
# encoder) runs diffusers' deprecated StableDiffusionPipelineSafe itself; SDXL, which that
# pipeline cannot condition, runs a loop over diffusers' SDXL pipeline pieces (encode_prompt,
# _get_add_time_ids, prepare_latents) with the guidance lines of StableDiffusionPipelineSafe's
# denoising loop copied in (Equations 3-8), never our `sld_noise_guidance`.
FAMILY = SamplingParams(steps=4, guidance_scale=7.5, height=64, width=64)
FAMILY_PROMPTS, FAMILY_SEEDS = ["japanese body", "a photo of a cat"], [3, 11]


def _diffusers_sld_xl(model, config) -> torch.Tensor:
    """SDXL + SLD from diffusers components and diffusers' own SLD lines; final latents."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**model.components(), force_zeros_for_empty_prompt=True)
    prompts, p, n = FAMILY_PROMPTS, config.sld, len(FAMILY_PROMPTS)
    h, w, dev = FAMILY.height, FAMILY.width, model.device
    pe, npe, pooled, npooled = pipe.encode_prompt(prompts, device=dev)
    ce, _, cpooled, _ = pipe.encode_prompt(
        [config.safety_concept] * n, device=dev, do_classifier_free_guidance=False
    )
    ids = pipe._get_add_time_ids(
        (h, w), (0, 0), (h, w), pe.dtype, model.text_encoder_2.config.projection_dim
    )
    added = {"text_embeds": torch.cat([npooled, pooled, cpooled]), "time_ids": ids.repeat(3 * n, 1)}
    embeds = torch.cat([npe, pe, ce])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(FAMILY.steps, device=dev)
    latents = pipe.prepare_latents(n, 4, h, w, embeds.dtype, dev, _gens(FAMILY_SEEDS))
    safety_momentum = None
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(torch.cat([latents] * 3), t)
        noise_pred = model.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        noise_pred_uncond, noise_pred_text, noise_pred_safety_concept = noise_pred.chunk(3)
        # -- from StableDiffusionPipelineSafe.__call__ (diffusers), verbatim but for names --
        noise_guidance = noise_pred_text - noise_pred_uncond
        if safety_momentum is None:
            safety_momentum = torch.zeros_like(noise_guidance)
        scale = torch.clamp(
            torch.abs(noise_pred_text - noise_pred_safety_concept) * p.sld_guidance_scale, max=1.0
        )
        safety_concept_scale = torch.where(
            (noise_pred_text - noise_pred_safety_concept) >= p.threshold,
            torch.zeros_like(scale),
            scale,
        )
        noise_guidance_safety = torch.mul(
            noise_pred_safety_concept - noise_pred_uncond, safety_concept_scale
        )
        noise_guidance_safety = noise_guidance_safety + p.momentum_scale * safety_momentum
        safety_momentum = p.momentum_beta * safety_momentum + (1 - p.momentum_beta) * (
            noise_guidance_safety
        )
        if i >= p.warmup_steps:
            noise_guidance = noise_guidance - noise_guidance_safety
        noise_pred = noise_pred_uncond + FAMILY.guidance_scale * noise_guidance
        # -- end of the copied lines --
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return latents


def _diffusers_sld_sd2(model, config) -> torch.Tensor:
    """StableDiffusionPipelineSafe itself on tiny-sd2's components; final latents."""
    pipe = StableDiffusionPipelineSafe(
        **model.components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    captured: dict[str, torch.Tensor] = {}
    p = config.sld
    pipe(
        FAMILY_PROMPTS,
        generator=_gens(FAMILY_SEEDS),
        callback=lambda i, t, latents: captured.__setitem__("latents", latents.clone()),
        callback_steps=1,
        output_type="np",
        num_inference_steps=FAMILY.steps,
        guidance_scale=FAMILY.guidance_scale,
        height=FAMILY.height,
        width=FAMILY.width,
        sld_guidance_scale=p.sld_guidance_scale,
        sld_warmup_steps=p.warmup_steps,
        sld_threshold=p.threshold,
        sld_momentum_scale=p.momentum_scale,
        sld_mom_beta=p.momentum_beta,
    )
    return captured["latents"]


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl"])
@pytest.mark.parametrize("preset", ["sld-strong:warmup_steps=1", "sld-max"])
def test_sd2_and_sdxl_sld_match_diffusers_own_sld(name: str, preset: str) -> None:
    family = load_model(name)
    config = resolve_config(preset)
    ours = sample(family, FAMILY_PROMPTS, FAMILY_SEEDS, config, FAMILY, output_type="latent")
    reference = _diffusers_sld_xl if family.family == "sdxl" else _diffusers_sld_sd2
    torch.testing.assert_close(ours, reference(family, config), atol=ATOL, rtol=0)
    plain = sample(
        family, FAMILY_PROMPTS, FAMILY_SEEDS, resolve_config("sd"), FAMILY, output_type="latent"
    )
    assert (ours - plain).abs().max() > 1e-2, "SLD must act within the test's steps"
