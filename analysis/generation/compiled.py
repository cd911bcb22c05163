"""`--compile`: the UNet through torch.compile, checked against eager before a run uses it.

A compiled UNet fuses kernels differently, so its images differ from eager ones in the last bits
(SLD's s_s can make that visible): `compile` is part of the spec and of every item id, exactly
like the batch size. Before the run starts, its real first batch (same prompts, seeds, config,
guidance scale, steps, size and B) is drawn eager and compiled and the largest difference of the
final latents is recorded; above the dtype's tolerance the run refuses to start. A shorter check
would miss what SLD's momentum and large s_s do to small differences over the later steps.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from analysis.errors import AuditError

#: max |eager - compiled| on the final latents of the run's first batch, per dtype
TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 1e-1}


def compile_unet(
    model: Any,
    spec: Any,
    prompts: list[str],
    seeds: list[int],
    config: Any,
    guidance_scale: float | None = None,
) -> dict:
    """Replace model.unet by its compiled version after checking it on the run's first batch
    (`prompts`, `seeds`, `config`, and its `guidance_scale`, default the spec's, since a prompt
    may carry its own); returns what the manifest records (backend, seconds, difference...)."""
    from analysis.generation.sampler import SamplingParams, sample

    backend = os.environ.get("T2I_AUDIT_COMPILE_BACKEND", "inductor")  # tests: "aot_eager"
    params = SamplingParams(
        steps=spec.steps,
        guidance_scale=spec.guidance_scale if guidance_scale is None else float(guidance_scale),
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
        "check": f"the run's first batch ({len(prompts)} images, {spec.steps} steps, "
        f"config {config.name}, guidance {params.guidance_scale:g}), eager vs compiled",
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
