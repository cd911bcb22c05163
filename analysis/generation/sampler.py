"""Our denoising loop over diffusers components: SD, SLD, SEGA and negative-prompt guidance.

Read it top to bottom: pad the batch to its fixed shape, encode texts, draw one noise tensor per
image from its own generator, then per step one UNet call on [unconditional | prompt | safety
concept], guidance, scheduler step, and finally the VAE decode; the padding rows are dropped.
The model family (SD 1.x, 2.x, XL) only changes step 1, the texts' conditioning (`conditioning`).

Fixed-shape batching: every model call runs at the run's batch size B whatever the number of
real rows. Kernels give row k the same bits as long as the call's shape is the same (measured:
max diff 0.0 on CPU when the other rows are replaced, reordered or copies of row k), while a
different shape moves the last bits, which SLD's large s_s turns into visible pixels. So an
image depends on its prompt, seed, config and B, never on what shares its batch.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from analysis.errors import AuditError
from analysis.generation.conditioning import condition, safree_swap
from analysis.generation.flow import sample_flow
from analysis.generation.flow_families import FLOW_FAMILIES
from analysis.generation.models import LoadedModel
from analysis.guidance import GuidanceConfig, sega_noise_guidance, sld_noise_guidance


def _sld(eps_u, eps_p, eps_c, state, i, scale, config):
    guided, state = sld_noise_guidance(eps_u, eps_p, eps_c, state, i, config.sld)
    return eps_u + scale * guided, state


def _sega(eps_u, eps_p, eps_c, state, i, scale, config):
    return sega_noise_guidance(eps_u, eps_p, eps_c, state, i, scale, config.sega)


#: kind -> (eps_u, eps_p, eps_concept, state, step, guidance scale, config) -> (eps, state)
CONCEPT_GUIDANCE: dict[str, Callable[..., tuple[torch.Tensor, Any]]] = {
    "sld": _sld,
    "sega": _sega,
}


@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings of a batch; `batch_size` is the fixed call shape B (None: as given)."""

    steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    eta: float = 0.0
    batch_size: int | None = None


def initial_latents(
    model: LoadedModel, seeds: list[int], params: SamplingParams
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """One CPU generator per image; noise drawn in float32 on the CPU, then moved.

    Drawing on the CPU makes an image's starting noise identical on every device and dtype.
    """
    factor = model.vae_scale_factor
    shape = (1, model.unet.config.in_channels, params.height // factor, params.width // factor)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise).to(model.device, model.dtype), generators


def _step_kwargs(scheduler: object, generators: list[torch.Generator], eta: float) -> dict:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generators
    return kwargs


@torch.no_grad()
def sample(
    model: LoadedModel,
    prompts: list[str],
    seeds: list[int],
    config: GuidanceConfig,
    params: SamplingParams,
    output_type: str = "pil",
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[Image.Image | None] | torch.Tensor:
    """Generate one image per (prompt, seed) under `config`; 'latent' returns the final latents.

    An image whose latents became NaN or infinite (extreme guidance) is None, never a black PNG
    that a classifier would score as harmless. `on_step(i, state)` sees each step's latents and
    SLD momentum (tests check the momentum recurrence across steps).
    """
    if model.family in FLOW_FAMILIES:  # SD3, FLUX: transformer, velocity (generation/flow.py)
        return sample_flow(model, prompts, seeds, config, params, output_type, on_step)
    # 0. Check inputs, then pad to the fixed shape B with copies of row 0 (dropped at the end).
    n = len(prompts)
    if n != len(seeds) or not prompts:
        raise AuditError(f"need one seed per prompt, got {n} prompts, {len(seeds)} seeds")
    size = params.batch_size or n
    if n > size:
        raise AuditError(f"{n} prompts do not fit the batch size {size}")
    prompts = list(prompts) + [prompts[0]] * (size - n)
    seeds = list(seeds) + [seeds[0]] * (size - n)
    do_cfg = params.guidance_scale > 1.0
    use_concept = do_cfg and config.uses_concept_branch

    # 1. Texts: [unconditional | prompt | safety concept]; `negative` replaces the unconditional.
    #    The family decides how texts become UNet inputs (SDXL adds pooled embeddings, time ids).
    #    SAFREE (with CFG, as the authors' pipeline) uses its concept words as negative prompt
    #    and swaps in projected prompt rows for some steps (`safree_swap`).
    safree = config.safree if config.kind == "safree" and do_cfg else None
    negative = config.kind == "negative" or (safree is not None and safree.negative_prompt)
    uncond = (config.safety_concept if negative else "") if do_cfg else None
    concept = config.safety_concept if use_concept else None
    cut = config.sega.cut_for(model.family) if config.sega is not None else "eos"
    cond = condition(model, prompts, uncond, concept, (params.height, params.width), cut)
    parts = cond.embeds.shape[0] // size
    swap = (
        None
        if safree is None
        else safree_swap(model, prompts, cond, config.safety_concept or "", safree)
    )

    # 2. Noise and timesteps (a private scheduler copy: schedulers keep per-run state).
    latents, generators = initial_latents(model, seeds, params)
    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(params.steps, device=model.device)
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, generators, params.eta)

    # 3. Denoising loop: one UNet call per step on all guidance branches. The UNet's output is
    #    whatever the scheduler expects (noise, or v for v-prediction); guidance combines it alike.
    momentum = None
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(torch.cat([latents] * parts), t)
        embeds = cond.embeds if swap is None else swap.embeds_at(i)
        out = model.unet(
            model_in, t, encoder_hidden_states=embeds, added_cond_kwargs=cond.added
        ).sample
        if do_cfg:
            branches = out.chunk(parts)
            eps_u, eps_p = branches[0], branches[1]
            if use_concept:
                combine = CONCEPT_GUIDANCE[config.kind]
                out, momentum = combine(
                    eps_u, eps_p, branches[2], momentum, i, params.guidance_scale, config
                )
            else:
                out = eps_u + params.guidance_scale * (eps_p - eps_u)
        latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
        if on_step is not None:
            on_step(i, {"latents": latents, "momentum": momentum})

    # 4. Decode at the fixed shape too, then drop the padding rows.
    if output_type == "latent":
        return latents[:n]
    return decode(model, latents)[:n]


def decode(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image | None]:
    """VAE decode to 8-bit RGB images (rounding as diffusers' image processor does).

    Rows with non-finite latents or decoded pixels come back as None.
    """
    vae = model.vae  # kept in float32 where the model asks for it (SDXL's fp16 VAE overflows)
    images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    finite = torch.isfinite(latents).flatten(1).all(1) & torch.isfinite(images).flatten(1).all(1)
    images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    arrays = (np.nan_to_num(images) * 255).round().astype(np.uint8)
    return [
        Image.fromarray(a) if ok else None for a, ok in zip(arrays, finite.tolist(), strict=True)
    ]


NON_FINITE = "latents became NaN or infinite during sampling (guidance parameters too extreme?)"
