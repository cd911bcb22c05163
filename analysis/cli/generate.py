"""CLI: `generate` (images for prompts x configs) and `merge` (consolidate shards' parts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from analysis.cli import options
from analysis.errors import AuditError

if TYPE_CHECKING:
    from analysis.store import Shard

console = Console()

MODEL_HELP = (
    "built-in random-weight models 'tiny', 'tiny-sd2', 'tiny-sdxl' (no files) or 'sd1-arch', "
    "'sd2-arch', 'sdxl-arch' (full-size architectures), a Hugging Face id, a local diffusers "
    "folder, or a .safetensors checkpoint (SD 1.x, 2.x, XL: the family is recognised)"
)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("merge")(merge)


def generate(
    out: Path = typer.Option(
        ..., "--out", help="Run directory (e.g. runs/NAME); resumes if it exists."
    ),
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    prompt: list[str] = typer.Option(None, "--prompt", help="A prompt (repeatable)."),
    prompts_file: Path = typer.Option(
        None, "--prompts-file", help=".txt (one per line) or a table with a 'prompt' column."
    ),
    images_per_prompt: int = typer.Option(1, "--images-per-prompt", min=1),
    seed: int = typer.Option(0, "--seed", help="Image k of every prompt uses seed S + k."),
    config: list[str] = typer.Option(
        ["sd"],
        "--config",
        help="Guidance config (repeatable); `<config>+filter` adds SD's image safety checker "
        "on that config's images (the tiny checker for --model tiny*).",
    ),
    steps: int = typer.Option(50, "--steps"),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale"),
    height: int = options.HEIGHT,
    width: int = options.WIDTH,
    compile_unet: bool = options.COMPILE,
    batch_size: int = typer.Option(
        4,
        "--batch-size",
        help="B, the fixed shape of every model call; part of the run (an image is bit-identical "
        "whatever shares its batch, for one B, device and dtype).",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps ..."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16"),
    unet: str = typer.Option(
        None, "--unet", help="Swap in UNet weights (e.g. ESD/UCE) from a file."
    ),
    text_encoder: str = options.TEXT_ENCODER,
    lora: str = options.LORA,
    lora_scale: float = options.LORA_SCALE,
    scheduler: str = typer.Option(None, "--scheduler", help="Scheduler class name override."),
    shard: str = options.SHARD,
    safety_concept: str = typer.Option(
        None,
        "--safety-concept",
        help="'diffusers' (default, 'an image showing ...'), 'sld-original' (no prefix), or text.",
    ),
    safety_checker_model: str = options.SAFETY_CHECKER_MODEL,
) -> None:
    """Generate images for prompts x configs into a run directory (resumable, shardable)."""
    from analysis.generation.prompts import prompts_from_texts, read_prompts_file
    from analysis.generation.runner import build_spec, run_generation
    from analysis.guardrails.arms import parse_config_arms
    from analysis.guidance import resolve_config
    from analysis.store import resolve_shard

    if bool(prompt) == bool(prompts_file):
        raise AuditError("give either --prompt (repeatable) or --prompts-file, not both or neither")
    arms = parse_config_arms(config)  # the parser probe and i2p run use
    the_shard = resolve_shard(shard)
    from analysis.classifiers.judges import filter_classifier

    image_filter = filter_classifier(model)  # SD's safety checker; the toy filter on toy
    checker = None
    if arms.wants_filter and image_filter == "safety-checker":
        checker = _filter_checker(model, safety_checker_model)
    prompts = (
        read_prompts_file(prompts_file, seed) if prompts_file else prompts_from_texts(prompt, seed)
    )
    spec = build_spec(
        model=model,
        unet=unet,
        text_encoder=text_encoder,
        lora=lora,
        lora_scale=lora_scale,
        configs=[resolve_config(c, safety_concept=safety_concept) for c in arms.generate],
        batch_size=batch_size,
        compile=compile_unet,
        prompts=prompts,
        images_per_prompt=images_per_prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        dtype=dtype,
        scheduler=scheduler,
    )
    summary = run_generation(spec, out, shard=the_shard, device=device)
    if arms.wants_filter:
        summary["filter"] = _score_filter(out, image_filter, checker, the_shard)
    print_summary(summary, title=f"generate → {out}")


def _filter_checker(model: str, given: str | None) -> str:
    """The checker of `+filter` arms, checked before anything is generated (a missing checker
    must not cost a whole generation first)."""
    from analysis.classifiers.safety_checker import check_available, checker_for

    checker = checker_for(model, given)
    check_available(checker)
    return checker


def _score_filter(out: Path, image_filter: str, checker: str | None, shard: Shard) -> str:
    """Score the run's images with the image filter: scores/<filter>.parquet holds each image's
    raw scores and verdict (withheld or not), scores/<filter>.json the filter."""
    from analysis.classifiers import classify_run

    result = classify_run(
        out, [image_filter], shard=shard, safety_checker_model=checker, progress=False
    )
    counts = result.get(image_filter, {})
    return f"{image_filter} {checker or ''}: {counts.get('scored', 0)} images scored"


def merge(run: Path = typer.Argument(..., help="Run directory whose shards to combine.")) -> None:
    """Consolidate every shard's parts into items.parquet and scores/*.parquet, then compact.

    The part files now covered move to parts/<stage>/merged/, so later reads parse only rows
    added since; shards still running keep appending safely.
    """
    from analysis.store import RunDir

    rundir = RunDir(run)
    rundir.read_manifest()
    items = rundir.consolidate_items(compact=True)
    merged = {"items": len(items), "done": int((items["status"] == "done").sum())}
    from analysis.classifiers import consolidate_scores

    for name, n in consolidate_scores(rundir.path, compact=True).items():
        merged[f"scores/{name}"] = n
    print_summary(merged, title=f"merge → {run}")


def print_summary(summary: dict, title: str) -> None:
    """A one-screen key/value summary."""
    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in summary.items():
        table.add_row(str(key), str(value))
    console.print(table)
