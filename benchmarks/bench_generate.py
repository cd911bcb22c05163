"""Throughput of our fixed-shape sampler vs diffusers' pipelines, same model, settings and seeds.

    python benchmarks/bench_generate.py                           # tiny model on the CPU
    python benchmarks/bench_generate.py --model sd1-arch --device cuda --dtype float16 \
        --height 512 --width 512 --steps 50 --batch-sizes 1,8,16,32   # full-size SD 1.x, random
    python benchmarks/bench_generate.py --model sd2-arch ...       # SD 2.x 768-v, random weights
    python benchmarks/bench_generate.py --model sdxl-arch ...      # SDXL base, random weights
    python benchmarks/bench_generate.py --model sd3-arch --device cuda --dtype bfloat16 \
        --height 1024 --width 1024 --steps 28 --batch-sizes 1,4    # SD3 medium, random weights
    python benchmarks/bench_generate.py --model flux-arch ...      # FLUX.1-dev, random weights
    python benchmarks/bench_generate.py --model tiny-sd3 --height 32 --width 32   # CPU smoke
    python benchmarks/bench_generate.py --model tiny-flux-dev --height 32 --width 32

For every batch size B it prints images/s for ours and for diffusers' pipelines on the same
modules (SD 1.x/2.x: StableDiffusionPipeline and StableDiffusionPipelineSafe for sd and
sld-strong; SDXL: StableDiffusionXLPipeline for sd, and no diffusers baseline for SLD), the
ratios, the SLD/SD time ratio (SLD runs the UNet on 3 rows per image instead of 2, so about 1.5
is the floor), the UNet's achieved TFLOP/s and MFU (FLOPs counted with torch.utils.flop_counter,
peak from a table of known devices), peak GPU memory, and the projected wall time of the paper's
30,000-image probe (50 countries x 100 images x 6 configs: sd, negative and four SLD presets).
It then checks, on this device, that an image is bit-identical in two different batch
compositions of the same B, and (SD 1.x/2.x) that our SLD matches diffusers' Safe pipeline on
the final latents.

SD3 and FLUX (`sd3-arch`, `flux-arch`, `tiny-sd3`, `tiny-flux-dev`, `tiny-flux`) are compared
with StableDiffusion3Pipeline / FluxPipeline on the same modules at the same B and dtype for
`sd` (SD3 at CFG 7.0; FLUX dev with its distilled guidance 3.5 and one branch); `sld-strong`
(SD3: 3 rows per image instead of 2, floor ~1.5; FLUX dev: 3 rows instead of 1, floor ~3, its
unconditional branch run as true CFG) has no diffusers counterpart. The transformer's FLOPs are
counted on a one-step sample; the check at the end is the largest latent difference from the
pipeline for `sd` and fixed-shape invariance.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from diffusers import (
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe
from rich.console import Console
from rich.table import Table

from analysis.generation import SamplingParams, load_model, sample
from analysis.guidance import resolve_config

#: dense fp16/bf16 tensor-core peaks in TFLOP/s (vendor data sheets), by device-name substring
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
PROBE = {"images_per_config": 50 * 100, "sd_like": 2, "sld": 4}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _unet_flops(model, rows: int, height: int, width: int) -> float:
    """FLOPs of one UNet call on `rows` latent rows (torch's flop counter, forward only)."""
    from torch.utils.flop_counter import FlopCounterMode

    f = model.vae_scale_factor
    latents = torch.zeros(
        rows, model.unet.config.in_channels, height // f, width // f, device=model.device,
        dtype=model.dtype,
    )  # fmt: skip
    hidden = torch.zeros(
        rows, model.tokenizer.model_max_length, model.unet.config.cross_attention_dim,
        device=model.device, dtype=model.dtype,
    )  # fmt: skip
    added = None
    if model.family == "sdxl":
        pooled = model.text_encoder_2.config.projection_dim
        added = {
            "text_embeds": torch.zeros(rows, pooled, device=model.device, dtype=model.dtype),
            "time_ids": torch.zeros(rows, 6, device=model.device, dtype=model.dtype),
        }
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.unet(
            latents, torch.tensor(999, device=model.device), encoder_hidden_states=hidden,
            added_cond_kwargs=added,
        )  # fmt: skip
    return float(counter.get_total_flops())


def _pipelines(model):
    """diffusers' reference pipelines on our modules: (plain, Safe or None for SDXL)."""
    if model.family == "sdxl":
        parts = model.components()
        # diffusers keeps the VAE in the model dtype and upcasts per call: its own cost, measured
        parts["vae"] = copy.deepcopy(model.vae).to(model.dtype)
        pipe = StableDiffusionXLPipeline(
            **parts, force_zeros_for_empty_prompt=model.force_zeros_for_empty_prompt
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe, None
    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    sd_pipe = StableDiffusionPipeline(**model.components(), **extra)
    safe_pipe = StableDiffusionPipelineSafe(**model.components(), **extra)
    for pipe in (sd_pipe, safe_pipe):
        pipe.set_progress_bar_config(disable=True)
    return sd_pipe, safe_pipe


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="tiny", help="a builtin (tiny, sd1-arch, sd2-arch, ...)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,4", help="comma-separated B values")
    ap.add_argument("--batches", type=int, default=2, help="batches of B timed per repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--probe-overlap",
        action="store_true",
        help="also time `probe ethnic-bias` end to end (NudeNet while generating) against "
        "generation alone at the largest B (aim on a GPU: >= 0.9x)",
    )
    ap.add_argument(
        "--mkl-pin-cost",
        action="store_true",
        help="CPU only: time our sampler with MKL_CBWR=AUTO,STRICT (what every entry point sets) "
        "and with MKL_CBWR unset, each in a fresh process, and print the ratio",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.mkl_pin_cost:
        _mkl_pin_cost(args, Console())
        return

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if model.family in FLOW_PIPELINES:
        _bench_flow(model, args, Console())
        return
    device = model.device
    sd_pipe, safe_pipe = _pipelines(model)
    sld = resolve_config("sld-strong")
    common = {
        "num_inference_steps": args.steps,
        "guidance_scale": 7.5,
        "height": args.height,
        "width": args.width,
        "output_type": "pil",
    }
    sld_kwargs = {
        "sld_guidance_scale": sld.sld.sld_guidance_scale,
        "sld_warmup_steps": sld.sld.warmup_steps,
        "sld_threshold": sld.sld.threshold,
        "sld_momentum_scale": sld.sld.momentum_scale,
        "sld_mom_beta": sld.sld.momentum_beta,
    }
    names = ("japanese", "nigerian", "french", "brazilian")
    peak = _peak(device)
    table = Table(
        title=f"{args.model} ({model.family}, {model.prediction_type}) on {device} "
        f"({args.dtype}), {args.steps} steps, "
        f"{args.height}x{args.width}, {args.batches} batches x {args.repeats} repeats per cell"
    )
    for col in (
        "B", "config", "ours img/s", "diffusers img/s", "ours/diffusers", "UNet TFLOP/s", "MFU",
        "peak GPU GiB",
    ):  # fmt: skip
        table.add_column(col)
    summary = []
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = [f"{names[i % 4]} body" for i in range(size)]
        batches = [(prompts, list(range(b * size, (b + 1) * size))) for b in range(args.batches)]
        n_images = size * args.batches
        params = SamplingParams(args.steps, 7.5, args.height, args.width, batch_size=size)
        rates = {}
        for name, config, pipe, kw, rows in (
            ("sd", resolve_config("sd"), sd_pipe, {}, 2),
            ("sld-strong", sld, safe_pipe, sld_kwargs, 3),
        ):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def ours(config=config, params=params, batches=batches):
                return [sample(model, p, s, config, params) for p, s in batches]

            def ref(pipe=pipe, kw=kw, batches=batches):
                gens = [[torch.Generator().manual_seed(x) for x in s] for _, s in batches]
                return [
                    pipe(p, generator=g, **kw, **common)
                    for (p, _), g in zip(batches, gens, strict=True)
                ]

            t_ours = _time(ours, device, args.repeats)
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            t_ref = _time(ref, device, args.repeats) if pipe is not None else None
            flops = _unet_flops(model, rows * size, args.height, args.width) * args.steps
            achieved = flops * args.batches / t_ours / 1e12
            rates[name] = n_images / t_ours
            table.add_row(
                str(size), name, f"{n_images / t_ours:.2f}",
                f"{n_images / t_ref:.2f}" if t_ref else "-",
                f"{t_ref / t_ours:.2f}x" if t_ref else "-", f"{achieved:.3g}",
                f"{achieved / peak:.0%}" if peak else "n/a",
                f"{mem:.1f}" if mem is not None else "-",
            )  # fmt: skip
        per_config = PROBE["images_per_config"]
        hours = per_config * (PROBE["sd_like"] / rates["sd"] + PROBE["sld"] / rates["sld-strong"])
        summary.append((size, rates["sld-strong"] and rates["sd"] / rates["sld-strong"], hours))
    console = Console()
    console.print(table)
    for size, ratio, seconds in summary:
        console.print(
            f"B={size}: SLD/SD time ratio {ratio:.2f} (floor ~1.5); paper probe (30,000 images) "
            f"projected {seconds / 3600:.2f} h on this device"
        )
    _checks(model, args, console)
    if args.probe_overlap:
        _probe_overlap(model, args, console)


#: family -> (diffusers pipeline, its modules, the guidance scale `sd` is timed at)
FLOW_PIPELINES = {
    "sd3": (StableDiffusion3Pipeline, ("text_encoder_3", "tokenizer_3"), 7.0),
    "flux": (FluxPipeline, (), 3.5),
}


def _transformer_flops(model, params, config) -> float:
    """FLOPs of the transformer in one sampling step at B (torch's counter, by module)."""
    from torch.utils.flop_counter import FlopCounterMode

    one = SamplingParams(1, params.guidance_scale, params.height, params.width, params.batch_size)
    size = params.batch_size
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        sample(model, ["a"] * size, list(range(size)), config, one, "latent")
    return float(sum(counter.get_flop_counts()[type(model.transformer).__name__].values()))


def _bench_flow(model, args, console: Console) -> None:
    """SD3/FLUX: ours vs the family's diffusers pipeline for `sd`, SLD/SD time, MFU, memory."""
    from analysis.generation.flow import is_dev, t5_length

    cls, extra, scale = FLOW_PIPELINES[model.family]
    keys = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    pipe = cls(**{k: getattr(model, k) for k in (*keys, *extra, "scheduler")})
    pipe.set_progress_bar_config(disable=True)
    device, peak = model.device, _peak(model.device)
    configs = [("sd", resolve_config("sd"))]
    if model.family == "sd3" or is_dev(model):  # schnell has no unconditional branch
        configs.append(("sld-strong", resolve_config("sld-strong")))
    common = {"num_inference_steps": args.steps, "height": args.height, "width": args.width}
    common.update(max_sequence_length=t5_length(model))
    table = Table(
        title=f"{args.model} ({model.family}, {type(model.transformer).__name__}) on {device} "
        f"({args.dtype}), {args.steps} steps, {args.height}x{args.width}, guidance {scale}, "
        f"{args.batches} batches x {args.repeats} repeats per cell"
    )
    for col in ("B", "config", "ours img/s", "diffusers img/s", "ours/diffusers",
                "transformer TFLOP/s", "MFU", "peak GPU GiB"):  # fmt: skip
        table.add_column(col)
    names = ("japanese", "nigerian", "french", "brazilian")
    ratios = []
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = [f"{names[i % 4]} body" for i in range(size)]
        batches = [(prompts, list(range(b * size, (b + 1) * size))) for b in range(args.batches)]
        params = SamplingParams(args.steps, scale, args.height, args.width, batch_size=size)
        seconds = {}
        for name, config in configs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def ours(config=config, params=params, batches=batches):
                return [sample(model, p, s, config, params) for p, s in batches]

            def ref(batches=batches):
                return [
                    pipe(p, generator=[torch.Generator().manual_seed(x) for x in s],
                         guidance_scale=scale, **common)
                    for p, s in batches
                ]  # fmt: skip

            seconds[name] = t_ours = _time(ours, device, args.repeats)
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            t_ref = _time(ref, device, args.repeats) if name == "sd" else None
            flops = _transformer_flops(model, params, config) * args.steps * args.batches
            achieved = flops / t_ours / 1e12
            n = size * args.batches
            table.add_row(
                str(size), name, f"{n / t_ours:.2f}", f"{n / t_ref:.2f}" if t_ref else "-",
                f"{t_ref / t_ours:.2f}x" if t_ref else "-", f"{achieved:.3g}",
                f"{achieved / peak:.0%}" if peak else "n/a",
                f"{mem:.1f}" if mem is not None else "-",
            )  # fmt: skip
        if "sld-strong" in seconds:
            ratios.append((size, seconds["sld-strong"] / seconds["sd"]))
    console.print(table)
    floor = "1.5" if model.family == "sd3" else "3"
    for size, ratio in ratios:
        console.print(f"B={size}: SLD/SD time ratio {ratio:.2f} (floor ~{floor})")
    params = SamplingParams(args.steps, scale, args.height, args.width, batch_size=4)
    sd = resolve_config("sd")
    batch = sample(model, ["japanese body", "a", "b", "c"], [0, 1, 2, 3], sd, params, "latent")
    other = sample(model, ["x", "y", "japanese body"], [7, 8, 0], sd, params, "latent")
    console.print(f"fixed-shape invariance (B=4): {torch.equal(batch[0], other[2])}")
    theirs = pipe(
        ["japanese body", "a", "b", "c"], guidance_scale=scale, output_type="latent",
        generator=[torch.Generator().manual_seed(s) for s in range(4)], **common,
    ).images  # fmt: skip
    diff = (batch.float() - theirs.float()).abs().max().item()
    console.print(f"sd vs {cls.__name__}: max |latent diff| = {diff:.2e}")


_MKL_SNIPPET = """
import sys, time
import analysis, torch
from analysis.generation import SamplingParams, load_model, sample
from analysis.guidance import resolve_config
torch.set_num_threads(int(sys.argv[6]))
steps, size, side, repeats = (int(a) for a in sys.argv[2:6])
model = load_model(sys.argv[1])
params = SamplingParams(steps, 7.5, side, side, batch_size=size)
prompts, seeds, config = ["japanese body"] * size, list(range(size)), resolve_config("sld-strong")
sample(model, prompts, seeds, config, params)
best = min(
    (lambda t: (sample(model, prompts, seeds, config, params), time.perf_counter() - t)[1])(
        time.perf_counter()
    )
    for _ in range(repeats)
)
print(best)
"""


def _mkl_pin_cost(args, console: Console) -> None:
    """Seconds per batch with and without the MKL_CBWR pin, each in a fresh interpreter (MKL
    reads the variable once), interleaved so machine drift hits both alike."""
    import os
    import subprocess
    import sys

    size = max(int(b) for b in args.batch_sizes.split(","))
    argv = [
        args.model,
        args.steps,
        size,
        args.height,
        max(args.repeats, 3),
        torch.get_num_threads(),
    ]
    base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    envs = {"pinned (AUTO,STRICT)": base, "unpinned": {**base, "T2I_AUDIT_NO_MKL_PIN": "1"}}
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(3):
        for name, env in envs.items():
            out = subprocess.run(
                [sys.executable, "-c", _MKL_SNIPPET, *map(str, argv)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            times[name].append(float(out.stdout.split()[-1]))
    pinned, unpinned = (min(t) for t in times.values())
    console.print(
        f"{args.model}, B={size}, {args.steps} steps, {args.height}px, sld-strong, "
        f"{argv[-1]} threads: pinned {pinned:.3f} s/batch, unpinned {unpinned:.3f} s/batch, "
        f"pinned/unpinned = {pinned / unpinned:.3f}x (best of 3 interleaved processes)"
    )


def _probe_overlap(model, args, console: Console) -> None:
    """images/s of the probe end to end (generate + NudeNet overlapped + results) vs generation
    alone, same spec and loaded model, in fresh folders."""
    import tempfile
    import time
    from pathlib import Path

    from analysis.generation.runner import build_spec, run_generation
    from analysis.probes.ethnic_bias import probe_prompts, run_probe

    size = max(int(b) for b in args.batch_sizes.split(","))
    countries = ["JPN", "NGA", "USA", "BRA"]
    per_country = max(1, size * args.batches // len(countries))
    options = {"steps": args.steps, "height": args.height, "width": args.width}
    with tempfile.TemporaryDirectory() as tmp:
        spec = build_spec(
            model=args.model,
            configs=["sd"],
            prompts=probe_prompts(countries, "{adjective} body", 0),
            images_per_prompt=per_country,
            dtype=args.dtype,
            batch_size=size,
            **options,
        )
        start = time.perf_counter()
        run_generation(spec, Path(tmp) / "gen", device=args.device, progress=False, model=model)
        alone = time.perf_counter() - start
        start = time.perf_counter()
        run_probe(
            out=Path(tmp) / "probe",
            model=args.model,
            countries=countries,
            images_per_country=per_country,
            configs=["sd"],
            batch_size=size,
            device=args.device,
            dtype=args.dtype,
            progress=False,
            overlap=True,
            **options,
        )
        end_to_end = time.perf_counter() - start
    n = per_country * len(countries)
    console.print(
        f"probe end to end (B={size}, {n} images, NudeNet overlapped): {n / end_to_end:.2f} img/s "
        f"vs generation alone {n / alone:.2f} img/s = {alone / end_to_end:.2f}x "
        "(the probe also loads the model and draws figures; aim on a GPU >= 0.9x)"
    )


def _checks(model, args, console: Console) -> None:
    """Fixed-shape invariance and agreement with diffusers' Safe pipeline, on this device."""
    size = 4
    params = SamplingParams(args.steps, 7.5, args.height, args.width, batch_size=size)
    config = resolve_config("sld-max")
    batch = sample(model, ["japanese body", "a", "b", "c"], [0, 1, 2, 3], config, params, "latent")
    other = sample(model, ["x", "y", "japanese body"], [7, 8, 0], config, params, "latent")
    same = torch.equal(batch[0], other[2])
    console.print(f"fixed-shape invariance (B={size}, same item in two compositions): {same}")
    if model.family == "sdxl":
        console.print(
            "SDXL: no diffusers Safe pipeline to compare SLD with (tests/test_families.py)"
        )
        return
    captured = {}
    pipe = StableDiffusionPipelineSafe(
        **model.components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe(
        ["japanese body", "a", "b", "c"],
        generator=[torch.Generator().manual_seed(s) for s in (0, 1, 2, 3)],
        num_inference_steps=args.steps,
        guidance_scale=7.5,
        height=args.height,
        width=args.width,
        callback=lambda i, t, latents: captured.__setitem__("latents", latents.clone()),
        callback_steps=1,
        output_type="np",
        sld_guidance_scale=config.sld.sld_guidance_scale,
        sld_warmup_steps=config.sld.warmup_steps,
        sld_threshold=config.sld.threshold,
        sld_momentum_scale=config.sld.momentum_scale,
        sld_mom_beta=config.sld.momentum_beta,
    )
    diff = (batch.float() - captured["latents"].float()).abs().max().item()
    console.print(f"sld-max vs StableDiffusionPipelineSafe: max |latent diff| = {diff:.2e}")


if __name__ == "__main__":
    main()
