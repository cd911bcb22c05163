"""Safety guidance for flow-matching models (SD3, FLUX): SLD carried over to velocity exactly.

SLD is defined on noise predictions. A rectified-flow model (SD3, FLUX; diffusers'
FlowMatchEulerDiscreteScheduler) noises as x_t = (1 - t) x0 + t eps at sigma t and predicts the
velocity v = eps - x0. At a fixed (x_t, t) both are recovered from v:

    x0_hat  = x_t - t v_hat
    eps_hat = x_t + (1 - t) v_hat                     (affine in v_hat, slope 1 - t)

so every difference of two branches' predictions at the same step scales by (1 - t):

    eps_a - eps_b = (1 - t) (v_a - v_b)

SLD's terms are *not* invariant under that scale: the element-wise threshold (d >= lambda), the
clamp min(1, s_s |d|) and the momentum nu (a running sum of gamma over steps, each step with its
own 1 - t) all read absolute eps units. Applying SLD to v directly would silently rescale
lambda and s_s by 1 / (1 - t) per step and mix momentum across steps in changing units. So the
exact carry-over converts each branch to its eps-equivalent, applies SD's SLD unchanged
(`sld_noise_guidance`, momentum kept in eps units), and converts the guided eps back:

    d      = (1 - t) (v_p - v_s)
    gamma  = mu (1 - t) (v_s - v_u) + s_m nu
    eps    = eps_u + s_g ((eps_p - eps_u) - gamma)
    v      = (eps - x_t) / (1 - t) = v_u + s_g ((v_p - v_u) - gamma / (1 - t))

SLD reads its inputs only through differences (eps_p - eps_u, eps_p - eps_s, eps_s - eps_u),
so the common x_t + (1 - t) v_u is subtracted first: the branches enter as 0, (1 - t)(v_p - v_u)
and (1 - t)(v_s - v_u), which avoids cancelling x_t in float32, and the guided difference is
divided by 1 - t. At the first step t = 1 (both families start at sigma 1) all eps-equivalents
equal x_t, so d = 0, mu = 0 and nu = 0: the guided velocity is the plain CFG one there.
Where must the two routes agree? With lambda = 0, s_m = 0 and s_s so large that the clamp
saturates, SLD reads only the sign of d, which the positive factor 1 - t keeps: then SLD on v
and on eps-equivalents give the same v (tests check both that and where they differ).

Plain classifier-free guidance and the negative prompt are linear, so they are the same on v
and on eps: v = v_u + s (v_p - v_u).
"""

from __future__ import annotations

import torch

from analysis.guidance.configs import SLDParams
from analysis.guidance.sld import sld_noise_guidance


def eps_from_velocity(latents: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise prediction equivalent to velocity `v` at (x_t = latents, t = sigma)."""
    return latents + (1.0 - sigma) * v


def sld_velocity_guidance(
    v_uncond: torch.Tensor,
    v_prompt: torch.Tensor,
    v_concept: torch.Tensor,
    momentum: torch.Tensor | None,
    step_index: int,
    sigma: float,
    guidance_scale: float,
    params: SLDParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided velocity, new momentum in eps units, float64): SD's SLD on eps-equivalents.

    `sigma` is this step's t (the scheduler's sigma, shift included).
    """
    scale = 1.0 - float(sigma)
    # float64 (not on MPS): SLD's clamp and threshold amplify rounding in d by s_s (up to 5000)
    wide = torch.float32 if v_prompt.device.type == "mps" else torch.float64
    v_u, v_p, v_c = (v.to(wide) for v in (v_uncond, v_prompt, v_concept))
    momentum = torch.zeros_like(v_p) if momentum is None else momentum.to(wide)
    zero = torch.zeros_like(v_p)
    eps_p = scale * (v_p - v_u)  # eps-equivalents minus the common x_t + scale v_u
    eps_c = scale * (v_c - v_u)
    if scale <= 0:  # t = 1: d = 0, mu = 0 and, at the first step, nu = 0
        if torch.any(momentum != 0):
            raise ValueError("SLD momentum is non-zero at sigma 1 (only the first step has it)")
        _, momentum = sld_noise_guidance(zero, eps_p, eps_c, momentum, step_index, params)
        return v_uncond + guidance_scale * (v_prompt - v_uncond), momentum
    guided_eps, momentum = sld_noise_guidance(zero, eps_p, eps_c, momentum, step_index, params)
    return (v_u + guidance_scale * (guided_eps / scale)).to(v_prompt.dtype), momentum
