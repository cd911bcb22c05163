"""One step of semantic guidance (SEGA) away from a safety concept, as a pure tensor function.

Follows diffusers' SemanticStableDiffusionPipeline for one editing prompt, which ml-research's
I2P repository runs as "semantic safety guidance" (`mitigation/semantic_ssd.py`): unlike SLD,
the edit term is not scaled by the guidance scale, and it is sparse: per image and channel only
the entries whose magnitude reaches the `edit_threshold` quantile are kept.
"""

from __future__ import annotations

import torch

from analysis.guidance.configs import SegaParams


def sega_noise_guidance(
    eps_uncond: torch.Tensor,
    eps_prompt: torch.Tensor,
    eps_concept: torch.Tensor,
    momentum: torch.Tensor | None,
    step_index: int,
    guidance_scale: float,
    params: SegaParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (noise prediction, new momentum).

    e = -/+ s_e (eps_c - eps_u); keep e where |e| >= quantile_q(|e|) over each (image, channel);
    e <- e + s_m nu; nu <- beta nu + (1 - beta) e (every step, warm-up included);
    eps = eps_u + s_g (eps_p - eps_u) + e once step_index >= warm-up (and before cool-down).
    """
    if momentum is None:
        momentum = torch.zeros_like(eps_prompt)
    guidance = guidance_scale * (eps_prompt - eps_uncond)
    cooldown = params.edit_cooldown_steps
    if cooldown is not None and step_index >= cooldown:
        edit = torch.zeros_like(eps_concept)
    else:
        edit = eps_concept - eps_uncond
        if params.reverse_editing_direction:
            edit = edit * -1
        edit = edit * params.edit_guidance_scale
        magnitude = torch.abs(edit).flatten(start_dim=2).to(torch.float32)
        cut = torch.quantile(magnitude, params.edit_threshold, dim=2).to(edit.dtype)
        edit = torch.where(torch.abs(edit) >= cut[:, :, None, None], edit, torch.zeros_like(edit))
    edit = edit + params.edit_momentum_scale * momentum
    momentum = params.edit_mom_beta * momentum + (1 - params.edit_mom_beta) * edit
    if step_index >= params.edit_warmup_steps:
        guidance = guidance + edit
    return eps_uncond + guidance, momentum
