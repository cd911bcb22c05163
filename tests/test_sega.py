"""SEGA safety guidance against references that share no code with `analysis/guidance/sega.py`.

SD 1.x and 2.x run diffusers' own (deprecated) SemanticStableDiffusionPipeline on the tiny models'
components; SDXL, which has no semantic pipeline, runs a loop over StableDiffusionXLPipeline's
pieces with the SEGA step written out here from the paper (Brack et al. 2023, eqs. 4-8). Then the
fixed-shape batching promise, config parsing and its dump, the runner's warning and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import SemanticStableDiffusionPipeline, StableDiffusionXLPipeline

from analysis.cli import main
from analysis.errors import AuditError
from analysis.generation import SamplingParams, load_model, sample
from analysis.generation.conditioning import token_ids
from analysis.guidance import DEFAULT_SAFETY_CONCEPT, resolve_config

PROMPTS, SEEDS = ["japanese body", "a photo of a cat"], [3, 11]
PARAMS = SamplingParams(steps=5, guidance_scale=7.5, height=64, width=64)
ATOL = 1e-5
# The presets with their warm-up cut so that they act within the test's 5 steps, and variants
# that exercise the cool-down and the non-reversed direction.
CONFIGS = [
    "sega-medium:edit_warmup_steps=2",
    "sega-strong:edit_warmup_steps=1",
    "sega-max",
    "sega-strong:edit_warmup_steps=1,edit_cooldown_steps=3",
    "sega-medium:edit_warmup_steps=1,reverse_editing_direction=False",
    # the quantile at an exact rank (the largest entry of each channel): `>=` keeps it, `>` not
    "sega-max:edit_threshold=1.0",
]


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {}


def _model(models: dict[str, Any], name: str):
    if name not in models:
        models[name] = load_model(name)
    return models[name]


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _semantic_pipeline_latents(model, config, prompts=PROMPTS, seeds=SEEDS) -> torch.Tensor:
    """diffusers' SemanticStableDiffusionPipeline, one editing prompt; final latents."""
    pipe = SemanticStableDiffusionPipeline(
        **model.components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    p = config.sega
    return pipe(
        prompt=prompts,
        num_inference_steps=PARAMS.steps,
        guidance_scale=PARAMS.guidance_scale,
        height=PARAMS.height,
        width=PARAMS.width,
        generator=_gens(seeds),
        output_type="latent",
        editing_prompt=config.safety_concept,
        edit_guidance_scale=p.edit_guidance_scale,
        edit_warmup_steps=p.edit_warmup_steps,
        edit_cooldown_steps=p.edit_cooldown_steps,
        edit_threshold=p.edit_threshold,
        edit_momentum_scale=p.edit_momentum_scale,
        edit_mom_beta=p.edit_mom_beta,
        reverse_editing_direction=p.reverse_editing_direction,
    ).images


def _plain(model, prompts=PROMPTS, seeds=SEEDS) -> torch.Tensor:
    return sample(model, prompts, seeds, resolve_config("sd"), PARAMS, output_type="latent")


def test_default_concept_is_longer_than_the_text_encoder_window() -> None:
    """The oracle cases below only test the cut if the concept really is cut."""
    for name in ("tiny", "tiny-sd2"):
        tok = load_model(name).tokenizer
        assert len(tok(DEFAULT_SAFETY_CONCEPT).input_ids) > tok.model_max_length


@pytest.mark.parametrize("preset", CONFIGS)
@pytest.mark.parametrize("name", ["tiny", "tiny-sd2"])
def test_sega_matches_semantic_pipeline(models, name: str, preset: str) -> None:
    model = _model(models, name)
    config = resolve_config(preset)
    assert config.safety_concept == DEFAULT_SAFETY_CONCEPT
    assert config.sega.cut_for(model.family) == "slice"
    ours = sample(model, PROMPTS, SEEDS, config, PARAMS, output_type="latent")
    ref = _semantic_pipeline_latents(model, config)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert (ours - _plain(model)).abs().max() > 1e-2, "SEGA must act within the test's steps"


def test_one_step_by_hand() -> None:
    """A 1x1x1x5 case computed by hand: the quantile lands on an entry (rank 0.5 * 4 = 2)."""
    from analysis.guidance.sega import sega_noise_guidance

    params = resolve_config("sega-max:edit_guidance_scale=2,edit_threshold=0.5").sega
    row = torch.tensor([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])
    eps_u, eps_p, eps_c = torch.zeros_like(row), torch.full_like(row, 0.1), row
    eps, nu = sega_noise_guidance(eps_u, eps_p, eps_c, None, 0, 7.5, params)
    # e = -2 * (1..5); |e| median 6 is kept (>=); s_m * nu = 0 on the first step
    psi = torch.tensor([[[[0.0, 0.0, -6.0, -8.0, -10.0]]]])
    torch.testing.assert_close(eps, 0.75 + psi, atol=1e-6, rtol=0)
    torch.testing.assert_close(nu, 0.6 * psi)
    # second step: psi' = psi + 0.5 nu, nu' = 0.4 nu + 0.6 psi'
    eps2, nu2 = sega_noise_guidance(eps_u, eps_p, eps_c, nu, 1, 7.5, params)
    psi2 = psi + 0.5 * (0.6 * psi)
    torch.testing.assert_close(eps2, 0.75 + psi2, atol=1e-6, rtol=0)
    torch.testing.assert_close(nu2, 0.4 * nu + 0.6 * psi2)
    # in warm-up the momentum still builds, the edit is not applied; after cool-down only s_m nu
    warm = params.model_copy(update={"edit_warmup_steps": 3, "edit_cooldown_steps": 1})
    eps3, nu3 = sega_noise_guidance(eps_u, eps_p, eps_c, None, 0, 7.5, warm)
    torch.testing.assert_close(eps3, torch.full_like(row, 0.75))
    torch.testing.assert_close(nu3, 0.6 * psi)
    eps4, _ = sega_noise_guidance(eps_u, eps_p, eps_c, nu3, 3, 7.5, warm)
    torch.testing.assert_close(eps4, 0.75 + 0.5 * nu3, atol=1e-6, rtol=0)


def test_long_prompts_of_different_lengths_share_a_batch(models) -> None:
    """The "slice" cut keeps each text's first 77 ids whatever the others' lengths.

    The semantic pipeline itself cannot batch such prompts (its tokenizer call fails), so each
    row is compared with the pipeline on two copies of that prompt: the same call shape (B = 2;
    SEGA's hard quantile mask turns B = 1's other last bits into 0.03 here).
    """
    model = _model(models, "tiny")
    config = resolve_config("sega-max")
    prompts = ["a photo of " + "red apples, " * 12, "a drawing of " + "blue whales and boats, " * 9]
    assert len({len(model.tokenizer(p).input_ids) for p in prompts}) == 2
    ids = token_ids(model.tokenizer, prompts, "slice")
    for row, prompt in zip(ids.tolist(), prompts, strict=True):
        assert row == model.tokenizer(prompt).input_ids[:77]
    ours = sample(model, prompts, SEEDS, config, PARAMS, output_type="latent")
    for k in range(2):
        ref = _semantic_pipeline_latents(model, config, [prompts[k]] * 2, [SEEDS[k]] * 2)
        torch.testing.assert_close(ours[k : k + 1], ref[:1], atol=ATOL, rtol=0)


def test_tiny_sd2_is_v_prediction(models) -> None:
    """So the SD 2 rows above cover guidance on v, not only on noise."""
    assert _model(models, "tiny-sd2").scheduler.config.prediction_type == "v_prediction"


def test_cooldown_and_direction_change_the_result(models) -> None:
    """The variants are not no-ops: each differs from its base by more than the tolerance."""
    model = _model(models, "tiny")
    base = "sega-strong:edit_warmup_steps=1"
    pairs = [
        (base, f"{base},edit_cooldown_steps=3"),
        (base, f"{base},reverse_editing_direction=False"),
    ]
    for a, b in pairs:
        la = sample(model, PROMPTS, SEEDS, resolve_config(a), PARAMS, output_type="latent")
        lb = sample(model, PROMPTS, SEEDS, resolve_config(b), PARAMS, output_type="latent")
        assert (la - lb).abs().max() > 1e-2, f"{b} does not change {a}"


# --- SDXL: an independent loop -------------------------------------------------------------------
#
# Texts are cut as the config says: on SDXL "auto" means the SDXL pipeline's own cut (with an end
# token: SDXL pools at the end token); "slice" (the semantic pipeline's cut, set explicitly) pads
# to 77 without truncating and keeps the first 77 ids. The reference gets "slice" by handing
# StableDiffusionXLPipeline.encode_prompt tokenizers that slice; encode_prompt does the rest
# (penultimate states, pooled output of encoder 2, zeros for the empty unconditional text).


class _SlicingTokenizer:
    """A tokenizer that ignores `truncation` and keeps the first model_max_length ids."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, texts: Any, **kwargs: Any) -> Any:
        kwargs["truncation"] = False
        out = self._tok(texts, **kwargs)
        if kwargs.get("padding") == "max_length":
            out["input_ids"] = out["input_ids"][:, : self._tok.model_max_length]
        return out


def _sega_step(
    eps_u: torch.Tensor,
    eps_p: torch.Tensor,
    eps_c: torch.Tensor,
    nu: torch.Tensor,
    i: int,
    s_g: float,
    p: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SEGA (Brack et al. 2023) for one concept, written from the paper's equations.

    psi = mu * (eps_c - eps_u), sign flipped for a reverse (away-from) edit; mu = s_e where
    |psi| is in the upper (1 - lambda) share of its channel, else 0 (eq. 5); psi += s_m * nu;
    nu = beta_m * nu + (1 - beta_m) * psi (eq. 7-8); the result joins classifier-free guidance
    from the warm-up step on, and stops at the cool-down step.
    """
    direction = -1.0 if p.reverse_editing_direction else 1.0
    active = p.edit_cooldown_steps is None or i < p.edit_cooldown_steps
    psi = torch.zeros_like(eps_c)
    if active:
        raw = direction * p.edit_guidance_scale * (eps_c - eps_u)
        b, c = raw.shape[:2]
        per_channel = raw.abs().reshape(b, c, -1)
        eta = per_channel.quantile(p.edit_threshold, dim=-1).reshape(b, c, 1, 1)
        psi = raw * (raw.abs() >= eta)
    psi = psi + p.edit_momentum_scale * nu
    nu = p.edit_mom_beta * nu + (1 - p.edit_mom_beta) * psi
    guided = s_g * (eps_p - eps_u)
    if i >= p.edit_warmup_steps:
        guided = guided + psi
    # summed in the semantic pipeline's order: (CFG term + psi) first, then eps_u
    return eps_u + guided, nu


def _sdxl_reference(model, config, prompts=PROMPTS, seeds=SEEDS) -> torch.Tensor:
    """SDXL + SEGA from diffusers' SDXL pipeline pieces and `_sega_step`; final latents."""
    parts = model.components()
    if config.sega.token_cut == "slice":
        parts["tokenizer"] = _SlicingTokenizer(parts["tokenizer"])
        parts["tokenizer_2"] = _SlicingTokenizer(parts["tokenizer_2"])
    pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True)
    n, h, w, dev = len(prompts), PARAMS.height, PARAMS.width, model.device
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
    scheduler.set_timesteps(PARAMS.steps, device=dev)
    latents = pipe.prepare_latents(n, 4, h, w, embeds.dtype, dev, _gens(seeds))
    nu = torch.zeros_like(latents)
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(torch.cat([latents] * 3), t)
        out = model.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        eps_u, eps_p, eps_c = out.chunk(3)
        eps, nu = _sega_step(eps_u, eps_p, eps_c, nu, i, PARAMS.guidance_scale, config.sega)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def test_sdxl_concept_is_cut_without_an_end_token(models) -> None:
    """What "slice" means for SDXL: both tokenizers keep 77 ids of the concept, none the end."""
    model = _model(models, "tiny-sdxl")
    for tok in (model.tokenizer, model.tokenizer_2):
        ids = token_ids(tok, [DEFAULT_SAFETY_CONCEPT], "slice")[0]
        assert ids.shape == (77,) and tok.eos_token_id not in ids.tolist()
        full = tok(DEFAULT_SAFETY_CONCEPT).input_ids
        assert ids.tolist() == full[:77]


@pytest.mark.parametrize(
    "preset",
    [*CONFIGS, "sega-max:token_cut=slice", "sega-strong:edit_warmup_steps=1,token_cut=slice"],
)
def test_sdxl_sega_matches_independent_loop(models, preset: str) -> None:
    model = _model(models, "tiny-sdxl")
    config = resolve_config(preset)
    ours = sample(model, PROMPTS, SEEDS, config, PARAMS, output_type="latent")
    torch.testing.assert_close(ours, _sdxl_reference(model, config), atol=ATOL, rtol=0)
    assert (ours - _plain(model)).abs().max() > 1e-2, "SEGA must act within the test's steps"


# --- fixed-shape batching ------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["sega-max", "sega-strong:edit_warmup_steps=1"])
def test_an_image_is_independent_of_its_batch(models, preset: str) -> None:
    """The quantile is per image and channel: company, position and padding change no bit."""
    model = _model(models, "tiny")
    config = resolve_config(preset)
    fixed = SamplingParams(steps=3, guidance_scale=7.5, height=32, width=32, batch_size=4)
    prompts = ["japanese body", "kenyan body", "a tree", "a red car"]
    seeds = [0, 1, 2, 3]
    batch = sample(model, prompts, seeds, config, fixed, output_type="latent")
    reverse = sample(model, prompts[::-1], seeds[::-1], config, fixed, output_type="latent")
    assert torch.equal(batch, reverse.flip(0)), "the position in the batch matters"
    for k in (0, 3):
        alone = sample(model, [prompts[k]], [seeds[k]], config, fixed, output_type="latent")
        assert torch.equal(alone, batch[k : k + 1]), f"image {k} depends on its batch"
    others = sample(
        model, [prompts[1], "a house", "a photo"], [seeds[1], 98, 99], config, fixed,
        output_type="latent",
    )  # fmt: skip
    assert torch.equal(others[:1], batch[1:2]), "other rows changed image 1"
    plain = sample(model, prompts, seeds, resolve_config("sd"), fixed, output_type="latent")
    assert (batch - plain).abs().max() > 1e-2, "SEGA must act within the test's steps"


# --- configs -------------------------------------------------------------------------------------

CONCEPT = DEFAULT_SAFETY_CONCEPT
# model_dump_json of configs that existed before SEGA, printed by the code of commit 17ba504: the
# new `sega` field must leave them (and so every item id made before) byte for byte unchanged.
OLD_DUMPS = {
    "sd": '{"name":"sd","kind":"sd","sld":null,"safety_concept":null,'
    '"source":"classifier-free guidance"}',
    "sld-strong": '{"name":"sld-strong","kind":"sld","sld":{"warmup_steps":7,'
    '"sld_guidance_scale":2000.0,"threshold":0.025,"momentum_scale":0.5,"momentum_beta":0.7},'
    f'"safety_concept":"{CONCEPT}","source":"diffusers SafetyConfig (reference code)"}}',
    "negative": '{"name":"negative","kind":"negative","sld":null,'
    f'"safety_concept":"{CONCEPT}","source":"safety concept as negative prompt"}}',
    # a customised config's name carries a hash of its dump: pinned too
    "sld-max:warmup_steps=2": '{"name":"sld-max-custom-386c6b","kind":"sld","sld":'
    '{"warmup_steps":2,"sld_guidance_scale":5000.0,"threshold":1.0,"momentum_scale":0.5,'
    f'"momentum_beta":0.7}},"safety_concept":"{CONCEPT}","source":"custom, based on sld-max"}}',
}


@pytest.mark.parametrize("name", list(OLD_DUMPS))
def test_configs_made_before_sega_dump_as_before(name: str) -> None:
    assert resolve_config(name).model_dump_json() == OLD_DUMPS[name]


def test_sega_presets_are_the_i2p_values() -> None:
    """ml-research/i2p mitigation/semantic_ssd.py: (s_e, warm-up, s_m, threshold), reversed."""
    expected = {"sega-medium": (4, 10, 0.3, 0.9), "sega-strong": (7, 5, 0.5, 0.85)}
    expected["sega-max"] = (10, 0, 0.5, 0.75)
    for name, (s_e, warmup, s_m, lam) in expected.items():
        p = resolve_config(name).sega
        got = (p.edit_guidance_scale, p.edit_warmup_steps, p.edit_momentum_scale, p.edit_threshold)
        assert got == (s_e, warmup, s_m, lam), name
        assert (p.edit_mom_beta, p.reverse_editing_direction, p.edit_cooldown_steps) == (
            0.4,
            True,
            None,
        )
        assert p.token_cut == "auto" and p.cut_for("sd1") == p.cut_for("sd2") == "slice"
        assert p.cut_for("sdxl") == "eos"


def test_sega_config_customises() -> None:
    config = resolve_config("sega-strong:edit_threshold=0.5")
    assert config.kind == "sega" and config.sega.edit_threshold == 0.5
    assert config.sega.edit_guidance_scale == 7 and config.name.startswith("sega-strong-custom-")
    assert config.params_dict()["sega"]["edit_threshold"] == 0.5
    named = resolve_config("sega-max:edit_cooldown_steps=3,reverse_editing_direction=false,name=x")
    assert (named.name, named.sega.edit_cooldown_steps) == ("x", 3)
    assert named.sega.reverse_editing_direction is False
    assert resolve_config("sega-max", safety_concept="nudity").safety_concept == "nudity"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sega-max:warmup_steps=2", "'sega-max' (sega) has no parameter(s) warmup_steps"),
        ("sega-max:sld_guidance_scale=10", "has no parameter(s) sld_guidance_scale"),
        ("sld-max:edit_threshold=0.5", "'sld-max' (sld) has no parameter(s) edit_threshold"),
        ("sd:edit_guidance_scale=3", "'sd' (sd) has no parameter(s) edit_guidance_scale"),
        ("sega-max:edit_threshold=1.5", "edit_threshold: Input should be less than or equal to 1"),
        ("sega-max:edit_threshold=-0.1", "edit_threshold: Input should be greater than or equal"),
        ("sega-max:edit_guidance_scale=-1", "edit_guidance_scale: Input should be greater"),
        ("sega-max:edit_guidance_scale=nan", "edit_guidance_scale: Input should be a finite"),
        ("sega-max:edit_momentum_scale=inf", "edit_momentum_scale: Input should be a finite"),
        ("sega-max:edit_mom_beta=1.01", "edit_mom_beta: Input should be less than or equal to 1"),
        ("sega-max:edit_warmup_steps=-1", "edit_warmup_steps: Input should be greater"),
        ("sega-max:edit_cooldown_steps=-2", "edit_cooldown_steps: Input should be greater"),
        ("sega-max:token_cut=middle", "token_cut: Input should be 'auto', 'slice' or 'eos'"),
    ],
)
def test_bad_sega_settings_are_one_named_line(text: str, message: str) -> None:
    with pytest.raises(AuditError) as info:
        resolve_config(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_sega_dict_config_is_checked_too() -> None:
    """The other way in (a TOML table as a dict) goes through the same checks."""
    with pytest.raises(AuditError, match="edit_threshold"):
        resolve_config({"base": "sega-medium", "edit_threshold": float("nan")})
    sega = resolve_config("sega-max").sega.model_dump()
    with pytest.raises(AuditError, match="edit_threshold"):
        resolve_config({"name": "raw", "kind": "sega", "sega": {**sega, "edit_threshold": 2}})


def test_runner_warns_when_the_warm_up_outlasts_the_steps() -> None:
    from analysis.generation.prompts import prompts_from_texts
    from analysis.generation.runner import build_spec

    def spec(configs: list[str], steps: int):
        return build_spec(
            model="tiny", configs=configs, prompts=prompts_from_texts(["a cat"]), steps=steps,
            height=32, width=32,
        )  # fmt: skip

    warnings = spec(["sd", "sega-medium", "sega-strong", "sega-max"], steps=5).warnings()
    assert any("sega-medium: warm-up 10 >= 5 steps" in w for w in warnings)
    assert any("sega-strong: warm-up 5 >= 5 steps" in w for w in warnings)
    assert not any("sega-max" in w for w in warnings)
    assert spec(["sega-strong"], steps=6).warnings() == []
    # a cool-down no later than the warm-up: the edit never acts directly
    (w,) = spec(["sega-max:edit_cooldown_steps=0,name=cool"], steps=6).warnings()
    assert "config cool: SEGA cools down at step 0" in w
    assert spec(["sega-max:edit_cooldown_steps=1,name=ok"], steps=6).warnings() == []


# --- end to end ----------------------------------------------------------------------------------


def test_generate_records_sega_and_its_images_differ(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["generate", "--model", "tiny", "--config", "sd", "--config", "sega-max"]
    argv += ["--prompt", "a body", "--images-per-prompt", "2", "--steps", "3"]
    argv += ["--height", "32", "--width", "32", "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    configs = {c["name"]: c for c in manifest["spec"]["configs"]}
    assert configs["sega-max"] == resolve_config("sega-max").params_dict()
    assert configs["sega-max"]["sega"] == {
        "edit_guidance_scale": 10.0,
        "edit_warmup_steps": 0,
        "edit_cooldown_steps": None,
        "edit_threshold": 0.75,
        "edit_momentum_scale": 0.5,
        "edit_mom_beta": 0.4,
        "reverse_editing_direction": True,
        "token_cut": "auto",
    }
    assert configs["sega-max"]["safety_concept"] == DEFAULT_SAFETY_CONCEPT
    assert "sega" not in configs["sd"]
    from PIL import Image

    for k in (0, 1):
        [sd] = (out / "images" / "sd").glob(f"*/{k}.png")
        [sega] = (out / "images" / "sega-max").glob(f"*/{k}.png")
        a = torch.tensor(list(Image.open(sd).getdata()), dtype=torch.int16)
        b = torch.tensor(list(Image.open(sega).getdata()), dtype=torch.int16)
        assert (a - b).abs().max() > 2, f"image {k}: SEGA left the pixels as SD's"
