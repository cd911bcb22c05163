"""`--compile`: the UNet through torch.compile, checked against eager before a run uses it.

A compiled UNet fuses kernels differently, so its images differ from eager ones in the last bits
(SLD's s_s can make that visible): `compile` is part of the spec and of every item id, exactly
like the batch size. Before the first batch, the same sample is drawn eager and compiled and the
largest latent difference is recorded; above the dtype's tolerance the run refuses to start.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from analysis.errors import AuditError

#: max |eager - compiled| on the final latents of a short check sample, per dtype
TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 1e-1}
CHECK_STEPS = 2


def compile_unet(model: Any, spec: Any, prompts: list[str], seeds: list[int], config: Any) -> dict:
    """Replace model.unet by its compiled version after checking it against eager; returns
    what the manifest records (backend, mode, seconds, max difference, tolerance)."""
    from analysis.generation.sampler import SamplingParams, sample

    backend = os.environ.get("T2I_AUDIT_COMPILE_BACKEND", "inductor")  # tests: "aot_eager"
    params = SamplingParams(
        steps=CHECK_STEPS,
        guidance_scale=spec.guidance_scale,
        height=spec.height,
        width=spec.width,
        batch_size=spec.batch_size,
    )
    eager = sample(model, prompts, seeds, config, params, output_type="latent")
    started = time.perf_counter()
    try:
        compiled = torch.compile(model.unet, backend=backend, fullgraph=False, dynamic=False)
        model.unet = compiled
        fast = sample(model, prompts, seeds, config, params, output_type="latent")
    except Exception as exc:  # a missing compiler, an unsupported op: say so, do not crash
        model.unet = getattr(model.unet, "_orig_mod", model.unet)
        reason = " ".join(str(exc).split())[:200]
        raise AuditError(f"--compile failed ({backend}): {reason}; run without --compile") from None
    diff = float((eager.float() - fast.float()).abs().max())
    tolerance = TOLERANCE[spec.dtype]
    record = {
        "backend": backend,
        "mode": "default",
        "dynamic": False,
        "compile_seconds": round(time.perf_counter() - started, 1),
        "check": f"{CHECK_STEPS}-step sample of the first batch, eager vs compiled",
        "max_abs_diff_vs_eager": diff,
        "tolerance": tolerance,
    }
    if not diff <= tolerance:  # also catches NaN
        model.unet = compiled._orig_mod
        raise AuditError(
            f"the compiled UNet differs from eager by {diff:.3g} (tolerance {tolerance:g} for "
            f"{spec.dtype}); run without --compile"
        )
    return record
