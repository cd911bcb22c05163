"""SD3 and FLUX in our sampler: diffusers' pipelines as oracles, fixed-shape batching, SLD on
velocity against a reference loop over diffusers' components, refusals, the CLI manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from analysis.cli import main
from analysis.errors import AuditError
from analysis.generation.families import default_size_for
from analysis.generation.flow_families import flow_family, load_flow_model
from analysis.generation.models import load_model
from analysis.generation.sampler import SamplingParams, sample
from analysis.guidance import resolve_config
from analysis.guidance.configs import SLDParams
from analysis.guidance.sld import sld_noise_guidance
from analysis.guidance.velocity import sld_velocity_guidance

PROMPTS = ["a body", "a tree"]
SEEDS = [3, 11]
SD3_PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
SD3_PARTS += ("text_encoder_3", "tokenizer_3", "scheduler")
FLUX_PARTS = (*SD3_PARTS[:6], "scheduler")


@pytest.fixture(scope="module")
def sd3():
    return load_model("tiny-sd3")


@pytest.fixture(scope="module")
def schnell():
    return load_model("tiny-flux")


@pytest.fixture(scope="module")
def dev():
    return load_model("tiny-flux-dev")


def _gens(seeds=SEEDS):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _params(steps=3, scale=4.0, b=None):
    return SamplingParams(steps=steps, guidance_scale=scale, height=32, width=32, batch_size=b)


def _ours(model, config="sd", steps=3, scale=4.0, prompts=PROMPTS, seeds=SEEDS, b=None, **kw):
    conf = resolve_config(config, **kw)
    return sample(model, prompts, seeds, conf, _params(steps, scale, b), output_type="latent")


def _pipe(model, cls, parts):
    return cls(**{k: getattr(model, k) for k in parts})


# 1. Oracles: the families' pipelines on the same per-image generators ------------------------


def test_sd3_matches_stable_diffusion_3_pipeline(sd3):
    ref = _pipe(sd3, StableDiffusion3Pipeline, SD3_PARTS)(
        PROMPTS, generator=_gens(), num_inference_steps=3, guidance_scale=4.0, height=32,
        width=32, output_type="latent", max_sequence_length=32,
    ).images  # fmt: skip
    ours = _ours(sd3)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_flux_schnell_matches_flux_pipeline_without_cfg(schnell):
    ref = _pipe(schnell, FluxPipeline, FLUX_PARTS)(
        PROMPTS, generator=_gens(), num_inference_steps=3, guidance_scale=0.0, height=32,
        width=32, output_type="latent", max_sequence_length=32,
    ).images  # fmt: skip
    # our guidance_scale is unused by schnell: any value samples the same
    torch.testing.assert_close(_ours(schnell, scale=7.5), ref, atol=1e-5, rtol=0)


def test_flux_dev_matches_flux_pipeline_guidance_embedding(dev):
    pipe = _pipe(dev, FluxPipeline, FLUX_PARTS)
    kw = {"num_inference_steps": 3, "height": 32, "width": 32, "output_type": "latent"}
    ref = pipe(PROMPTS, generator=_gens(), guidance_scale=3.5, max_sequence_length=32, **kw)
    torch.testing.assert_close(_ours(dev, scale=3.5), ref.images, atol=1e-5, rtol=0)
    # the embedding is live: another guidance value gives other latents
    assert (_ours(dev, scale=1.0) - ref.images).abs().max() > 1e-3


def test_flux_dev_negative_runs_as_true_cfg(dev):
    """`negative` on dev = FluxPipeline(negative_prompt=concept, true_cfg_scale=guidance)."""
    ref = _pipe(dev, FluxPipeline, FLUX_PARTS)(
        PROMPTS, generator=_gens(), num_inference_steps=3, guidance_scale=3.0, height=32,
        width=32, output_type="latent", max_sequence_length=32, negative_prompt="magenta",
        true_cfg_scale=3.0,
    ).images  # fmt: skip
    ours = _ours(dev, "negative", scale=3.0, safety_concept="magenta")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert "true CFG" in dev.provenance["guidance"]


# 2. Fixed-shape batching: an image is bit-identical whatever shares its batch -----------------


@pytest.mark.parametrize("name,config", [("tiny-sd3", "sld-max"), ("tiny-flux-dev", "sld-max")])
def test_an_image_does_not_depend_on_its_batch(name, config, request):
    model = request.getfixturevalue({"tiny-sd3": "sd3", "tiny-flux-dev": "dev"}[name])
    alone = _ours(model, config, steps=2, prompts=["a body"], seeds=[5], b=3)
    shared = _ours(model, config, steps=2, prompts=["a tree", "a house", "a body"],
                   seeds=[1, 2, 5], b=3)  # fmt: skip
    assert torch.equal(alone[0], shared[2])


# 3. SLD on velocity ----------------------------------------------------------------------------


def _sld_eps64(eps_u, eps_p, eps_c, nu, i, p):
    """SLD as DESIGN.md writes it, in float64 (independent of analysis.guidance)."""
    d = eps_p - eps_c
    scale = torch.clamp(d.abs() * p["s_s"], max=1.0)
    mu = torch.where(d >= p["lam"], torch.zeros_like(scale), scale)
    gamma = mu * (eps_c - eps_u) + p["s_m"] * nu
    nu = p["beta"] * nu + (1 - p["beta"]) * gamma
    guided = (eps_p - eps_u) - gamma if i >= p["warmup"] else eps_p - eps_u
    return guided, nu


def _reference_sld_sd3(model, prompts, seeds, concept, steps, s_g, p):
    """A loop over diffusers' SD3 components: the pipeline's encode_prompt and prepare_latents,
    v -> eps = x + (1 - sigma) v per branch, SLD on eps (float64), eps -> v, Euler step."""
    pipe = _pipe(model, StableDiffusion3Pipeline, SD3_PARTS)
    n = len(prompts)
    emb, neg, pool, neg_pool = pipe.encode_prompt(
        prompts, None, None, do_classifier_free_guidance=True, max_sequence_length=32
    )
    c_emb, _, c_pool, _ = pipe.encode_prompt(
        [concept] * n, None, None, do_classifier_free_guidance=False, max_sequence_length=32
    )
    embeds, pooled = torch.cat([neg, emb, c_emb]), torch.cat([neg_pool, pool, c_pool])
    x = pipe.prepare_latents(n, 16, 32, 32, torch.float32, "cpu", _gens(seeds))
    sched = pipe.scheduler
    sched.set_timesteps(steps)
    nu = torch.zeros_like(x, dtype=torch.float64)
    for i, t in enumerate(sched.timesteps):
        out = model.transformer(
            hidden_states=torch.cat([x] * 3), timestep=t.expand(3 * n),
            encoder_hidden_states=embeds, pooled_projections=pooled, return_dict=False,
        )[0]  # fmt: skip
        sigma = float(sched.sigmas[i])
        x64 = x.double()
        v_u, v_p, v_c = (v.double() for v in out.chunk(3))
        eps_u, eps_p, eps_c = (x64 + (1 - sigma) * v for v in (v_u, v_p, v_c))
        guided, nu = _sld_eps64(eps_u, eps_p, eps_c, nu, i, p)
        eps = eps_u + s_g * guided
        v = (eps - x64) / (1 - sigma) if sigma < 1 else v_u + s_g * (v_p - v_u)
        x = sched.step(v.float(), t, x, return_dict=False)[0]
    return x


def test_sld_on_sd3_matches_a_reference_loop_and_changes_the_image(sd3):
    config = "sld-strong:warmup_steps=1"  # acts within 4 steps; sld-strong's other parameters
    ours = _ours(sd3, config, steps=4, scale=5.0, safety_concept="magenta")
    p = {"s_s": 2000.0, "lam": 0.025, "s_m": 0.5, "beta": 0.7, "warmup": 1}
    ref = _reference_sld_sd3(sd3, PROMPTS, SEEDS, "magenta", 4, 5.0, p)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    plain = _ours(sd3, "sd", steps=4, scale=5.0)
    assert (ours - plain).abs().max() > 1e-2


def test_sld_on_velocity_equals_sld_on_eps_equivalents():
    """Route A: convert each branch to eps, SD's SLD, convert back. Route B: ours. They agree
    over steps with momentum; SLD applied to v directly (route C) does not, except where SLD
    reads only the sign of d (lambda 0, no momentum, saturated clamp)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, 4, generator=gen)
    vs = [torch.randn(3, 2, 16, 4, 4, generator=gen) * 0.05 for _ in range(3)]
    params = SLDParams(
        warmup_steps=1, sld_guidance_scale=1000, threshold=0.01, momentum_scale=0.3,
        momentum_beta=0.4,
    )  # fmt: skip
    mom_a = mom_b = None
    for i, sigma in enumerate((0.9, 0.6, 0.3)):
        v_u, v_p, v_c = vs[i]
        eps = [(x.double() + (1 - sigma) * v.double()) for v in (v_u, v_p, v_c)]
        guided, mom_a = sld_noise_guidance(*eps, mom_a, i, params)
        route_a = ((eps[0] + 7.0 * guided - x.double()) / (1 - sigma)).float()
        route_b, mom_b = sld_velocity_guidance(v_u, v_p, v_c, mom_b, i, sigma, 7.0, params)
        torch.testing.assert_close(route_b, route_a, atol=1e-5, rtol=0)
        torch.testing.assert_close(mom_b.double(), mom_a, atol=1e-7, rtol=0)
    g_c, _ = sld_noise_guidance(v_u, v_p, v_c, None, 1, params)
    assert (v_u + 7.0 * g_c - route_b).abs().max() > 1e-3  # on v directly: not SLD
    sign_only = SLDParams(
        warmup_steps=0, sld_guidance_scale=1e12, threshold=0.0, momentum_scale=0.0,
        momentum_beta=0.0,
    )  # fmt: skip
    g_c, _ = sld_noise_guidance(v_u, v_p, v_c, None, 0, sign_only)
    route_b, _ = sld_velocity_guidance(v_u, v_p, v_c, None, 0, 0.3, 7.0, sign_only)
    torch.testing.assert_close(route_b, v_u + 7.0 * g_c, atol=1e-5, rtol=0)


def test_sld_at_sigma_one_is_the_cfg_limit():
    v_u, v_p, v_c = torch.randn(3, 1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    params = resolve_config("sld-max").sld
    out, mom = sld_velocity_guidance(v_u, v_p, v_c, None, 0, 1.0, 5.0, params)
    torch.testing.assert_close(out, v_u + 5.0 * (v_p - v_u))
    assert not mom.any()


def test_sld_is_refused_on_schnell_and_runs_as_true_cfg_on_dev(schnell, dev):
    with pytest.raises(AuditError, match="FLUX schnell is distilled without classifier-free"):
        _ours(schnell, "sld-max", steps=1)
    plain = _ours(dev, "sd", steps=2)
    guided = _ours(dev, "sld-max", steps=2, safety_concept="magenta")
    assert (guided - plain).abs().max() > 1e-3


# 4. Recognition and the CLI ---------------------------------------------------------------------


def test_a_saved_sd3_folder_is_recognised_and_samples_as_the_builtin(sd3, tmp_path):
    _pipe(sd3, StableDiffusion3Pipeline, SD3_PARTS).save_pretrained(tmp_path / "m")
    assert flow_family(str(tmp_path / "m")) == "sd3"
    folder = load_flow_model(str(tmp_path / "m"))
    assert folder.provenance["kind"] == "folder" and folder.prediction_type == "flow"
    assert torch.equal(_ours(folder, steps=2), _ours(sd3, steps=2))
    # default size as the pipeline's: transformer.sample_size (4) x VAE factor (8)
    assert default_size_for(str(tmp_path / "m")) == 32 == default_size_for("tiny-flux")
    assert default_size_for("sd3-arch") == 1024


@pytest.mark.parametrize(
    "model,configs",
    [("tiny-sd3", ["sd", "sld-max"]), ("tiny-flux", ["sd"]), ("tiny-flux-dev", ["sd", "sld-max"])],
)
def test_generate_records_family_and_flow_prediction(model, configs, tmp_path):
    argv = ["generate", "--model", model, "--prompt", "a body", "--images-per-prompt", "2"]
    argv += ["--steps", "2", "--height", "32", "--width", "32", "--out", str(tmp_path / "r")]
    for c in configs:
        argv += ["--config", c]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code in (0, None)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    family = "sd3" if model == "tiny-sd3" else "flux"
    assert manifest["model"]["family"] == family
    assert manifest["model"]["prediction_type"] == "flow"
    pngs = sorted(Path(tmp_path / "r" / "images").rglob("*.png"))
    assert len(pngs) == 2 * len(configs)


def test_a_saved_flux_dev_folder_is_recognised_and_sd_options_are_refused(dev, tmp_path):
    _pipe(dev, FluxPipeline, FLUX_PARTS).save_pretrained(tmp_path / "m")
    folder = load_model(str(tmp_path / "m"))
    assert folder.family == "flux" and "true CFG" in folder.provenance["guidance"]
    assert torch.equal(_ours(folder, steps=2), _ours(dev, steps=2))
    with pytest.raises(AuditError, match=r"--lora cannot be used with tiny-sd3 \(sd3"):
        load_model("tiny-sd3", lora=str(tmp_path / "x.safetensors"))


# --- the engine's guarantees on flow models: shards merge to the whole run, runs extend ----------


@pytest.mark.parametrize(
    ("name", "configs"), [("tiny-sd3", ["sd", "sld-max"]), ("tiny-flux", ["sd"])]
)
def test_flow_shards_and_extension_give_the_images_of_one_run(tmp_path: Path, name, configs):
    """Sharded (3 ways, batches composed differently) and extended runs of SD3/FLUX write the
    same PNG bytes as one fresh run: fixed-shape batching holds through the runner."""
    from analysis.generation.prompts import prompts_from_texts
    from analysis.generation.runner import build_spec, run_generation
    from analysis.store import Shard

    def spec(prompts, images):
        return build_spec(
            model=name, configs=configs, prompts=prompts_from_texts(prompts, base_seed=5),
            images_per_prompt=images, steps=2, height=32, width=32, batch_size=2,
        )  # fmt: skip

    def pngs(run: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob("images/**/*.png"))
        }

    full = spec(["a body", "a tree", "a red car"], 3)
    run_generation(full, tmp_path / "whole", progress=False)
    for i in range(3):
        run_generation(full, tmp_path / "sharded", shard=Shard(i, 3), progress=False)
    with pytest.raises(SystemExit) as merged:
        main(["merge", str(tmp_path / "sharded")])
    assert merged.value.code == 0
    assert pngs(tmp_path / "sharded") == pngs(tmp_path / "whole")
    run_generation(spec(["a body"], 2), tmp_path / "grown", progress=False)
    summary = run_generation(full, tmp_path / "grown", progress=False)
    assert summary["already_done"] == 2 * len(configs)
    assert pngs(tmp_path / "grown") == pngs(tmp_path / "whole")
