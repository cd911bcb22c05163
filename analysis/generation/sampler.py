"""Our denoising loop over diffusers components: SD, SLD and negative-prompt guidance.

Read it top to bottom: pad the batch to its fixed shape, encode texts, draw one noise tensor per
image from its own generator, then per step one UNet call on [unconditional | prompt | safety
concept], guidance, scheduler step, and finally the VAE decode; the padding rows are dropped.

Fixed-shape batching: every model call runs at the run's batch size B whatever the number of
real rows. Kernels give row k the same bits as long as the call's shape is the same (measured:
max diff 0.0 on CPU when the other rows are replaced, reordered or copies of row k), while a
different shape moves the last bits, which SLD's large s_s turns into visible pixels. So an
image depends on its prompt, seed, config and B, never on what shares its batch.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from analysis.errors import AuditError
from analysis.generation.models import LoadedModel
from analysis.guidance import GuidanceConfig, sld_noise_guidance


@dataclass(frozen=True)
class SamplingParams:
    """Sampler settings of a batch; `batch_size` is the fixed call shape B (None: as given)."""

    steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    eta: float = 0.0
    batch_size: int | None = None


def encode_text(model: LoadedModel, texts: list[str]) -> torch.Tensor:
    """CLIP text embeddings, padded/truncated to the tokenizer's max length (as diffusers does)."""
    tokens = model.tokenizer(
        texts,
        padding="max_length",
        max_length=model.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return model.text_encoder(tokens.input_ids.to(model.device))[0].to(model.dtype)


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
) -> list[Image.Image | None] | torch.Tensor:
    """Generate one image per (prompt, seed) under `config`; 'latent' returns the final latents.

    An image whose latents became NaN or infinite (extreme guidance) is None, never a black PNG
    that a classifier would score as harmless.
    """
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
    use_sld = do_cfg and config.kind == "sld" and config.sld is not None and config.sld.enabled

    # 1. Texts: [unconditional | prompt | safety concept]; `negative` replaces the unconditional.
    cond = encode_text(model, prompts)
    uncond_text = config.safety_concept if config.kind == "negative" else ""
    embeds = [encode_text(model, [uncond_text]).expand(size, -1, -1), cond] if do_cfg else [cond]
    if use_sld:
        embeds.append(encode_text(model, [config.safety_concept]).expand(size, -1, -1))
    embeds = torch.cat(embeds)
    parts = embeds.shape[0] // size

    # 2. Noise and timesteps (a private scheduler copy: schedulers keep per-run state).
    latents, generators = initial_latents(model, seeds, params)
    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(params.steps, device=model.device)
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, generators, params.eta)

    # 3. Denoising loop: one UNet call per step on all guidance branches.
    momentum = None
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(torch.cat([latents] * parts), t)
        eps = model.unet(model_in, t, encoder_hidden_states=embeds).sample
        if do_cfg:
            branches = eps.chunk(parts)
            eps_u, eps_p = branches[0], branches[1]
            if use_sld:
                guided, momentum = sld_noise_guidance(
                    eps_u, eps_p, branches[2], momentum, i, config.sld
                )
            else:
                guided = eps_p - eps_u
            eps = eps_u + params.guidance_scale * guided
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample

    # 4. Decode at the fixed shape too, then drop the padding rows.
    if output_type == "latent":
        return latents[:n]
    return decode(model, latents)[:n]


def decode(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image | None]:
    """VAE decode to 8-bit RGB images (rounding as diffusers' image processor does).

    Rows with non-finite latents or decoded pixels come back as None.
    """
    images = model.vae.decode(latents / model.vae.config.scaling_factor).sample
    finite = torch.isfinite(latents).flatten(1).all(1) & torch.isfinite(images).flatten(1).all(1)
    images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    arrays = (np.nan_to_num(images) * 255).round().astype(np.uint8)
    return [
        Image.fromarray(a) if ok else None for a, ok in zip(arrays, finite.tolist(), strict=True)
    ]


NON_FINITE = "latents became NaN or infinite during sampling (guidance parameters too extreme?)"
