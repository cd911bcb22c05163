"""SAFREE (`--config safree`) against an independent reference loop, hand-computed projections
and step counts, and the fixed-shape batching rule.

The reference loop below is written from the paper (arXiv 2410.12761) and the observed behaviour
of the authors' SD 1.x pipeline (which has no licence, so none of its code is here); it shares no
code with `analysis/guidance/safree.py`. Against the authors' pipeline itself, run from a mirror
on the tiny model, our latents matched bit for bit at batch size 1 (see the issue's report).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from analysis.errors import AuditError
from analysis.generation import SamplingParams, load_model, sample
from analysis.guidance import PRESETS, resolve_config
from analysis.guidance.safree import (
    NUDITY_CONCEPTS,
    project_tokens,
    projection_matrix,
    safree_embeddings,
    self_validation_beta,
    trigger_tokens,
    validation_steps,
)

STEPS = 3
ALONE = SamplingParams(steps=STEPS, guidance_scale=7.5, height=32, width=32, batch_size=1)
FIXED3 = SamplingParams(steps=STEPS, guidance_scale=7.5, height=32, width=32, batch_size=3)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


# ---------------------------------------------------------------- the independent reference loop


def _pool(model, ids, mask=None) -> torch.Tensor:
    return model.text_encoder(ids, attention_mask=mask).pooler_output


def _span_projector(rows: torch.Tensor) -> torch.Tensor:
    """Paper eq.: P = E (E^T E)^+ E^T, the columns of E being the given vectors."""
    e = rows.t()
    return e.matmul(torch.linalg.pinv(e.t().matmul(e))).matmul(e.t())


@torch.no_grad()
def _reference_latents(model, prompt: str, seed: int, words, alpha, up_t, svf) -> torch.Tensor:
    tok, enc = model.tokenizer, model.text_encoder
    full = tok([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    text = enc(full.input_ids)[0][0]
    neg = tok(
        [", ".join(words)],
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    )
    uncond = enc(neg.input_ids)[0][0]
    space = tok(
        list(words), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    p_c = _span_projector(_pool(model, space.input_ids, space.attention_mask))
    ids = tok([prompt], return_tensors="pt").input_ids[0]
    n = len(ids) - 2
    variants = []
    for j in range(n):  # token j (position j + 1) replaced by id 0
        v = ids.clone()
        v[j + 1] = 0
        variants.append(v)
    masked = _pool(model, torch.stack(variants))
    keep_away = torch.eye(p_c.shape[0]) - p_c
    dist = (keep_away @ masked.t()).norm(dim=0)
    projected = (keep_away @ _span_projector(masked) @ text.t()).t()
    merged = text.clone()
    for j in range(n):
        rest = [float(dist[m]) for m in range(n) if m != j]
        mean_rest = sum(rest) / len(rest) if rest else float("nan")
        if not float(dist[j]) < (1 + alpha) * mean_rest:
            merged[j + 1] = projected[j + 1]
    if svf:
        real = full.attention_mask[0].bool()
        a, b = projected[real].double(), text[real].double()
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        beta = 1 - float(cos.mean())
        last = round(up_t * 1 / (1 + math.exp(-5.0 * (10 * beta - 5.333))))
    else:
        last = 10**6
    sched = copy.deepcopy(model.scheduler)
    sched.set_timesteps(STEPS)
    g = torch.Generator("cpu").manual_seed(seed)
    side = 32 // model.vae_scale_factor
    shape = (1, model.unet.config.in_channels, side, side)
    lat = torch.randn(shape, generator=g) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        cond = merged if i <= last else text
        x = sched.scale_model_input(torch.cat([lat, lat]), t)
        eps = model.unet(x, t, encoder_hidden_states=torch.stack([uncond, cond])).sample
        e_u, e_p = eps.chunk(2)
        lat = sched.step(e_u + 7.5 * (e_p - e_u), t, lat).prev_sample
    return lat


@pytest.mark.parametrize(
    ("override", "alpha", "up_t", "svf"),
    [("up_t=1", 0.01, 1, True), ("alpha=0.3,self_validation_filter=false", 0.3, 10, False)],
)
def test_final_latents_match_the_reference_loop(model, override, alpha, up_t, svf) -> None:
    """up_t=1 over 3 steps: steps 0-1 projected, step 2 plain (the tiny model's beta ~0.9)."""
    config = resolve_config(f"safree:{override}")
    for prompt, seed in (("a nude body", 1), ("sexy naked woman", 3)):
        ours = sample(model, [prompt], [seed], config, ALONE, output_type="latent")
        ref = _reference_latents(model, prompt, seed, NUDITY_CONCEPTS, alpha, up_t, svf)
        assert (ours - ref).abs().max() <= 1e-5, prompt


def test_safree_differs_from_sd_and_batching_is_fixed_shape(model) -> None:
    config = resolve_config("safree")
    alone = sample(model, ["a nude body"], [1], config, FIXED3, output_type="latent")
    among = sample(model, ["a cat", "x", "a nude body"], [5, 6, 1], config, FIXED3, "latent")
    assert torch.equal(alone[0], among[2])
    plain = sample(model, ["a nude body"], [1], resolve_config("sd"), FIXED3, "latent")
    assert (plain[0] - alone[0]).abs().max() > 0.1


# ---------------------------------------------------------------- the pure pieces by hand


def _orthonormal_projector(rows: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rows.T)
    return q @ q.T


def test_projection_matches_a_hand_computed_one() -> None:
    rng = np.random.default_rng(0)
    concept, masked, tokens = (
        rng.normal(size=(3, 8)),
        rng.normal(size=(4, 8)),
        rng.normal(size=(6, 8)),
    )
    p_c = _orthonormal_projector(concept)
    expected = ((np.eye(8) - p_c) @ _orthonormal_projector(masked) @ tokens.T).T
    ours_pc = projection_matrix(torch.from_numpy(concept))
    np.testing.assert_allclose(ours_pc.numpy(), p_c, atol=1e-10)
    got = project_tokens(torch.from_numpy(tokens), torch.from_numpy(masked), ours_pc)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)


def test_trigger_tokens_and_which_positions_are_replaced() -> None:
    """Concept subspace = the x axis; distances from it of the masked prompts: 1, 1, 3.
    Token 2 is 3 >= 1.01 * mean(1, 1): a trigger; tokens 0, 1: 1 < 1.01 * mean(1, 3): kept."""
    p_c = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    masked = torch.tensor([[5.0, 1.0, 0.0], [-2.0, 0.0, 1.0], [0.5, 3.0, 0.0]], dtype=torch.float64)
    assert trigger_tokens(masked, p_c, 0.01).tolist() == [False, False, True]
    # alpha large enough: 3 < 3.1 * 1 keeps every token
    assert trigger_tokens(masked, p_c, 2.1).tolist() == [False, False, False]
    embeds = torch.arange(18, dtype=torch.float64).reshape(6, 3)
    merged, projected = safree_embeddings(embeds, masked, p_c, 0.01)
    assert torch.equal(merged[[0, 1, 2, 4, 5]], embeds[[0, 1, 2, 4, 5]])  # start, kept, end
    assert torch.equal(merged[3], projected[3])  # token 2 sits at position 3
    assert abs(float(projected[3, 0])) < 1e-12  # nothing left along the concept axis
    assert not torch.equal(projected[3], embeds[3])


@pytest.mark.parametrize(
    ("beta", "up_t", "expected"),
    [
        (0.5333, 10, 5),  # sigmoid(0) = 0.5
        (0.5333, 5, 2),  # 2.5 rounds half to even, as Python's round in the authors' f_beta
        (0.5, 10, 2),  # 10 / (1 + e^1.665) = 1.59
        (0.6, 10, 10),  # 10 / (1 + e^-3.335) = 9.66
        (0.3, 10, 0),
    ],
)
def test_self_validation_step_count(beta, up_t, expected) -> None:
    assert validation_steps(beta, up_t) == expected


def test_self_validation_beta_uses_the_real_tokens_only() -> None:
    embeds = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    projected = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # cosines 1, 0, -1
    real = torch.tensor([True, True, False])
    assert self_validation_beta(embeds, projected, real) == pytest.approx(0.5)


# ---------------------------------------------------------------- configs


def test_config_dumps_and_overrides() -> None:
    assert "safree" not in PRESETS["sld-max"].params_dict()  # older item ids unchanged
    custom = resolve_config("safree:alpha=0.02,up_t=4")
    assert custom.safree.alpha == 0.02 and custom.safree.up_t == 4
    assert custom.name.startswith("safree-custom-")
    assert resolve_config("safree", safety_concept="magenta").safety_concept == "magenta"
    with pytest.raises(AuditError, match="latent_re_attention=True is not implemented"):
        resolve_config("safree:latent_re_attention=true")


def test_sdxl_is_refused_with_one_line() -> None:
    xl = load_model("tiny-sdxl")
    with pytest.raises(AuditError, match="not SDXL"):
        sample(xl, ["a cat"], [1], resolve_config("safree"), ALONE, output_type="latent")
