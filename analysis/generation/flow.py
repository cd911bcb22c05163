"""Our sampling loop for flow-matching transformers: SD3 (MMDiT) and FLUX, with SLD on velocity.

Read it top to bottom, as `sampler.sample`: pad the batch to its fixed shape B, encode texts per
family, draw one noise tensor per image from its own CPU generator, set the sigmas as the
family's pipeline does, then per step one transformer call on all branches, guidance on the
velocity, an Euler step, and the VAE decode with the family's scaling and shift factors.

- SD3 (`StableDiffusion3Pipeline`): two CLIPs (penultimate states, concatenated, padded to T5's
  width) then T5 along the sequence; pooled = both CLIPs' projections. CFG as SD: branches
  [unconditional "" | prompt (| concept)]. Sigmas shifted by the scheduler's `shift` (3.0), or
  by mu from the image's token count when the scheduler says `use_dynamic_shifting`.
- FLUX (`FluxPipeline`): CLIP's pooled output + T5's states; latents packed into 2x2 patches
  with their position ids; sigmas linspace(1, 1/n) shifted by mu = calculate_shift(tokens).
  schnell has no CFG: only `sd` runs. dev embeds its distilled `guidance` in every call; a
  config that needs an unconditional or concept branch (negative, SLD) runs those branches as
  the pipeline's true CFG does (`true_cfg_scale`, here = guidance_scale unless given).

The transformer's output is a velocity; CFG and the negative prompt are linear and act on it
as on eps; SLD acts on eps-equivalents (`analysis.guidance.velocity`). Fixed-shape batching
holds as in `sampler`: every call runs at parts x B rows, fixed texts encoded as B copies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from analysis.errors import AuditError
from analysis.generation.flow_families import FLOW_FAMILIES
from analysis.guidance.velocity import sld_velocity_guidance

#: the T5 sequence length each family's pipeline uses by default (capped by the tokenizer's)
T5_LENGTH = {"sd3": 256, "flux": 512}


def is_dev(model: Any) -> bool:
    """A FLUX with a distilled guidance embedding (FLUX.1-dev); schnell has none."""
    return model.family == "flux" and bool(model.transformer.config.guidance_embeds)


def size_factor(model: Any) -> int:
    """Image sides must be multiples of this: VAE factor x patch (SD3) or x 2 (FLUX packing)."""
    patch = model.transformer.config.patch_size if model.family == "sd3" else 2
    return model.vae_scale_factor * int(patch)


def check_flow(
    model: Any, configs: list[Any], height: int, width: int, scale: float, compile: bool = False
) -> None:
    """Refuse, before anything is written, what cannot run on this model: one line each."""
    if model.family not in FLOW_FAMILIES:
        return
    if compile:
        raise AuditError(f"--compile compiles SD UNets; {model.family} models run eagerly")
    factor = size_factor(model)
    for name, side in (("height", height), ("width", width)):
        if side % factor:
            raise AuditError(
                f"{name} {side} is not a multiple of {factor}, which {model.family} needs "
                f"(VAE factor {model.vae_scale_factor} x patch {factor // model.vae_scale_factor})"
            )
    name = model.provenance.get("spec", model.family)
    for config in configs:
        kind = config.kind
        if kind in ("sega", "safree"):
            raise AuditError(
                f"config {config.name!r} ({kind}) is not implemented for {model.family} models "
                f"({name}): it is defined on SD UNet noise predictions/CLIP embeddings; use sd, "
                "negative or an SLD config"
            )
        if kind == "sd":
            continue
        if model.family == "flux" and not is_dev(model):
            raise AuditError(
                f"config {config.name!r} ({kind}) cannot act on {name}: FLUX schnell is "
                "distilled without classifier-free guidance, so there is no unconditional "
                "branch to guide; use --config sd, or a FLUX dev model"
            )
        if kind == "sld" and not config.uses_concept_branch:
            raise AuditError(f"config {config.name!r} has s_s < 1: SLD would be off; use sd")
        if scale <= 1.0:
            raise AuditError(
                f"config {config.name!r} ({kind}) needs guidance_scale > 1 on {name} (it acts "
                f"through the unconditional branch), got {scale}"
            )


def _ids(tokenizer: Any, texts: list[str], length: int) -> torch.Tensor:
    return tokenizer(
        texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids


def t5_length(model: Any) -> int:
    """The pipeline's default max_sequence_length, capped at the T5 tokenizer's own length."""
    tok = model.tokenizer_3 if model.family == "sd3" else model.tokenizer_2
    return min(T5_LENGTH[model.family], int(tok.model_max_length))


def encode_sd3(model: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3: (CLIP-L | CLIP-G penultimate states padded to T5's width, then T5; pooled L | G)."""
    hidden, pooled = [], []
    for tok, enc in (
        (model.tokenizer, model.text_encoder),
        (model.tokenizer_2, model.text_encoder_2),
    ):
        out = enc(
            _ids(tok, texts, tok.model_max_length).to(model.device), output_hidden_states=True
        )
        hidden.append(out.hidden_states[-2])
        pooled.append(out[0])
    t5 = model.text_encoder_3(_ids(model.tokenizer_3, texts, t5_length(model)).to(model.device))[0]
    clip = torch.cat(hidden, dim=-1).to(model.dtype)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5.to(model.dtype)], dim=-2), torch.cat(pooled, -1).to(model.dtype)


def encode_flux(model: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX: (T5's last hidden states, CLIP's pooled output)."""
    tok = model.tokenizer
    clip = model.text_encoder(_ids(tok, texts, tok.model_max_length).to(model.device))
    t5 = model.text_encoder_2(_ids(model.tokenizer_2, texts, t5_length(model)).to(model.device))
    return t5[0].to(model.dtype), clip.pooler_output.to(model.dtype)


def _latent_side(model: Any, side: int) -> int:
    if model.family == "flux":
        return 2 * (side // (model.vae_scale_factor * 2))
    return side // model.vae_scale_factor


def initial_latents(
    model: Any, seeds: list[int], height: int, width: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One CPU generator per image, noise in float32 (FLUX: then packed into 2x2 patches)."""
    channels = model.transformer.config.in_channels // (4 if model.family == "flux" else 1)
    h, w = _latent_side(model, height), _latent_side(model, width)
    noise = [
        torch.randn((1, channels, h, w), generator=torch.Generator("cpu").manual_seed(int(s)))
        for s in seeds
    ]
    latents = torch.cat(noise)
    if model.family == "flux":
        latents = latents.view(len(seeds), channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        latents = latents.reshape(len(seeds), (h // 2) * (w // 2), channels * 4)
    return latents.to(model.device, model.dtype), (h, w)


def _shift(n_tokens: int, config: Any, max_shift: float) -> float:
    """diffusers' calculate_shift: mu linear in the image's token count."""
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    m = (top - base) / (max_len - base_len)
    return n_tokens * m + (base - m * base_len)


def timesteps(model: Any, steps: int, latent_hw: tuple[int, int]) -> Any:
    """A private scheduler copy with the family pipeline's sigmas (shift or mu) set."""
    scheduler = copy.deepcopy(model.scheduler)
    h, w = latent_hw
    if model.family == "flux":
        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = _shift((h // 2) * (w // 2), scheduler.config, 1.15)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            scheduler.set_timesteps(steps, device=model.device, mu=mu)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=model.device, mu=mu)
        scheduler.set_begin_index(0)
        return scheduler
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting", None):
        patch = model.transformer.config.patch_size
        kwargs["mu"] = _shift((h // patch) * (w // patch), scheduler.config, 1.16)
    scheduler.set_timesteps(steps, device=model.device, **kwargs)
    return scheduler


def _image_ids(h: int, w: int, model: Any) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(model.device, model.dtype)


@torch.no_grad()
def sample_flow(
    model: Any,
    prompts: list[str],
    seeds: list[int],
    config: Any,
    params: Any,
    output_type: str = "pil",
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    true_cfg_scale: float | None = None,
) -> list[Image.Image | None] | torch.Tensor:
    """One image per (prompt, seed) under `config`; 'latent' returns the final latents as the
    family's pipeline does (FLUX: packed). `params` is the sampler's SamplingParams."""
    # 0. Check inputs, then pad to the fixed shape B with copies of row 0 (dropped at the end).
    n = len(prompts)
    if n != len(seeds) or not prompts:
        raise AuditError(f"need one seed per prompt, got {n} prompts, {len(seeds)} seeds")
    size = params.batch_size or n
    if n > size:
        raise AuditError(f"{n} prompts do not fit the batch size {size}")
    check_flow(model, [config], params.height, params.width, params.guidance_scale)
    prompts = list(prompts) + [prompts[0]] * (size - n)
    seeds = list(seeds) + [seeds[0]] * (size - n)
    dev = is_dev(model)
    if model.family == "sd3":
        do_cfg, cfg_scale = params.guidance_scale > 1.0, params.guidance_scale
    else:  # FLUX: only true CFG, and only for configs that need a branch (check_flow: dev only)
        do_cfg = config.kind != "sd"
        cfg_scale = params.guidance_scale if true_cfg_scale is None else true_cfg_scale
    use_concept = do_cfg and config.kind == "sld"

    # 1. Texts: [unconditional | prompt | safety concept]; `negative` replaces the unconditional.
    #    Fixed texts are encoded as B copies, so each encoder call has the batch's shape.
    encode = encode_sd3 if model.family == "sd3" else encode_flux
    texts = [prompts]
    if do_cfg:
        uncond = config.safety_concept if config.kind == "negative" else ""
        texts.insert(0, [uncond] * size)
    if use_concept:
        texts.append([config.safety_concept] * size)
    encoded = [encode(model, t) for t in texts]
    embeds = torch.cat([e for e, _ in encoded])
    pooled = torch.cat([p for _, p in encoded])
    parts = len(texts)

    # 2. Noise and sigmas (a private scheduler copy); FLUX's position ids and guidance embedding.
    latents, latent_hw = initial_latents(model, seeds, params.height, params.width)
    scheduler = timesteps(model, params.steps, latent_hw)
    extra: dict[str, Any] = {}
    if model.family == "flux":
        extra["txt_ids"] = torch.zeros(embeds.shape[1], 3).to(model.device, model.dtype)
        extra["img_ids"] = _image_ids(*latent_hw, model)
        if dev:
            extra["guidance"] = torch.full(
                [parts * size], params.guidance_scale, device=model.device, dtype=torch.float32
            )

    # 3. Denoising loop: one transformer call per step on all branches; guidance on velocity.
    momentum = None
    for i, t in enumerate(scheduler.timesteps):
        model_in = torch.cat([latents] * parts)
        timestep = t.expand(model_in.shape[0])
        if model.family == "flux":
            timestep = timestep.to(latents.dtype) / 1000
        out = model.transformer(
            hidden_states=model_in,
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
            **extra,
        )[0]
        if do_cfg:
            branches = out.chunk(parts)
            v_u, v_p = branches[0], branches[1]
            if use_concept:
                sigma = float(scheduler.sigmas[i])
                out, momentum = sld_velocity_guidance(
                    v_u, v_p, branches[2], momentum, i, sigma, cfg_scale, config.sld
                )
            else:
                out = v_u + cfg_scale * (v_p - v_u)
        latents = scheduler.step(out, t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(i, {"latents": latents, "momentum": momentum})

    # 4. Decode at the fixed shape too, then drop the padding rows.
    if output_type == "latent":
        return latents[:n]
    return decode_flow(model, latents, latent_hw)[:n]


def decode_flow(
    model: Any, latents: torch.Tensor, latent_hw: tuple[int, int]
) -> list[Image.Image | None]:
    """Unpack (FLUX), undo the VAE's scaling and shift, decode to 8-bit RGB; non-finite -> None."""
    if model.family == "flux":
        h, w = latent_hw
        b, _, c = latents.shape
        latents = latents.view(b, h // 2, w // 2, c // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        latents = latents.reshape(b, c // 4, h, w)
    vae = model.vae
    scaled = latents / vae.config.scaling_factor + vae.config.shift_factor
    images = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    finite = torch.isfinite(latents).flatten(1).all(1) & torch.isfinite(images).flatten(1).all(1)
    images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    arrays = (np.nan_to_num(images) * 255).round().astype(np.uint8)
    return [
        Image.fromarray(a) if ok else None for a, ok in zip(arrays, finite.tolist(), strict=True)
    ]
