"""CLI: `quality generate` (COCO captions x configs) and `quality score` (FID, CLIP distance)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from analysis.cli import options
from analysis.cli.generate import MODEL_HELP, print_summary

console = Console()
quality_app = typer.Typer(
    help="Image quality and text alignment per config: COCO FID and CLIP distance (SLD Table 2).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

REFERENCE_HELP = "Folder of real images (e.g. COCO val2014) that FID compares against."
INCEPTION_HELP = (
    "FID Inception weights (weights-inception-2015-12-05-6726825d.pth); default "
    "$T2I_AUDIT_INCEPTION_WEIGHTS, then the torch hub checkpoints folder."
)
CLIP_HELP = "CLIP for CLIP distance: a hub id already in the local cache, a folder, or 'tiny'."


def register(app: typer.Typer) -> None:
    app.add_typer(quality_app, name="quality")


@quality_app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="Run directory; resumes if it exists."),
    captions: Path = typer.Option(
        ..., "--captions", help="COCO captions_val2014.json, or a CSV with a 'caption' column."
    ),
    n: int = typer.Option(30_000, "--n", min=1, help="Captions to sample (one per image)."),
    sample_seed: int = typer.Option(0, "--sample-seed", help="Seed of the caption sample."),
    seed: int = typer.Option(0, "--seed", help="Caption i uses seed S + i in every config."),
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    config: list[str] = typer.Option(["sd"], "--config", help="Guidance config (repeatable)."),
    steps: int = typer.Option(50, "--steps"),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale"),
    height: int = options.HEIGHT,
    width: int = options.WIDTH,
    batch_size: int = typer.Option(4, "--batch-size", help="B; see `generate --help`."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
    shard: str = options.SHARD,
    reference: Path = typer.Option(
        None, "--reference", help=REFERENCE_HELP + " Given: score once generation is complete."
    ),
    inception_weights: Path = typer.Option(None, "--inception-weights", help=INCEPTION_HELP),
    clip_model: str = typer.Option("openai/clip-vit-large-patch14", "--clip-model", help=CLIP_HELP),
) -> None:
    """Sample COCO captions (recorded) and generate one image per caption and config."""
    from analysis.guidance import resolve_config
    from analysis.quality.run import generate_quality
    from analysis.store import resolve_shard

    if reference is not None:  # fail before hours of generation, not after
        _check_weights(inception_weights, clip_model)
    summary = generate_quality(
        out=out,
        captions_file=captions,
        n=n,
        sample_seed=sample_seed,
        seed=seed,
        model=model,
        configs=[resolve_config(c) for c in config],
        steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        shard=resolve_shard(shard),
    )
    print_summary(summary, title=f"quality generate → {out}")
    if reference is not None and summary.get("complete"):
        _score(out, reference, inception_weights, clip_model, device, 32, "center-crop")


@quality_app.command("score")
def score(
    run: Path = typer.Argument(..., help="A run made by `quality generate`."),
    reference: Path = typer.Option(..., "--reference", help=REFERENCE_HELP),
    inception_weights: Path = typer.Option(None, "--inception-weights", help=INCEPTION_HELP),
    clip_model: str = typer.Option("openai/clip-vit-large-patch14", "--clip-model", help=CLIP_HELP),
    device: str = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    reference_preprocess: str = typer.Option(
        "center-crop",
        "--reference-preprocess",
        help="center-crop (to the generated size, bicubic) or none (as stored).",
    ),
) -> None:
    """FID and CLIP distance (with a bootstrap interval) per config → results/quality.csv."""
    _score(run, reference, inception_weights, clip_model, device, batch_size, reference_preprocess)


def _check_weights(inception_weights: Path | None, clip_model: str) -> None:
    from analysis.quality.clip_distance import check_clip_weights
    from analysis.quality.fid import resolve_inception_weights

    resolve_inception_weights(inception_weights)
    check_clip_weights(clip_model)


def _score(
    run: Path,
    reference: Path,
    inception_weights: Path | None,
    clip_model: str,
    device: str,
    batch_size: int,
    reference_preprocess: str,
) -> None:
    from rich.table import Table

    from analysis.quality.run import score_quality

    table = score_quality(
        run,
        reference,
        inception_weights=inception_weights,
        clip_model=clip_model,
        device=device,
        batch_size=batch_size,
        reference_preprocess=reference_preprocess,
    )
    out = Table(title=f"quality → {run}/results/quality.csv", title_justify="left")
    for col in ("config", "n", "fid", "clip_distance", "ci_low", "ci_high"):
        out.add_column(col)
    for row in table.itertuples():
        out.add_row(
            row.config,
            str(row.n),
            f"{row.fid:.2f}",
            f"{row.clip_distance:.4f}",
            f"{row.ci_low:.4f}",
            f"{row.ci_high:.4f}",
        )
    console.print(out)
    console.print(f"conventions: {table['fid_resize'].iloc[0]}; {table['fid_weights'].iloc[0]}")
