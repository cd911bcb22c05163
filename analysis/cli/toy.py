"""CLI: `toy train` (the known-answer model trained on the planted world)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from analysis.errors import AuditError, one_line

console = Console()
toy_app = typer.Typer(
    help="The toy model: a tiny SD 1.x trained on a world whose concept rates are planted.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _default(field: str) -> int:
    """The shipped recipe's value, so `toy train` with no options retrains the shipped weights."""
    from analysis.toy.recipe import Recipe

    return int(Recipe.model_fields[field].default)


def register(app: typer.Typer) -> None:
    app.add_typer(toy_app, name="toy")


@toy_app.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="New folder for the model (diffusers + toy.json)."),
    seed: int = typer.Option(_default("seed"), "--seed", help="Seed of the world and training."),
    vae_steps: int = typer.Option(_default("vae_steps"), "--vae-steps", help="Autoencoder steps."),
    unet_steps: int = typer.Option(
        _default("unet_steps"), "--unet-steps", help="UNet + text encoder steps."
    ),
    per_country: int = typer.Option(
        _default("per_country"), "--per-country", help="Training images per country."
    ),
    threads: int = typer.Option(
        _default("threads"), "--threads", help="CPU threads (part of the recipe)."
    ),
) -> None:
    """Train the toy model on the CPU (seeded, deterministic) into a new folder --out."""
    from analysis.store.ownership import check_output
    from analysis.toy.train import RECIPE_FILE, Recipe
    from analysis.toy.train import train as run_training

    try:
        recipe = Recipe(
            seed=seed,
            vae_steps=vae_steps,
            unet_steps=unet_steps,
            per_country=per_country,
            threads=threads,
        )
    except ValidationError as exc:
        raise AuditError(f"invalid toy recipe: {one_line(exc)}") from exc
    check_output(out, folder=True)
    if out.exists() and any(out.iterdir()):
        try:
            done = json.loads((out / RECIPE_FILE).read_text(encoding="utf-8")).get("recipe")
        except (OSError, ValueError):
            done = None
        if done == recipe.model_dump():
            console.print(f"{out} already holds a toy model trained with this recipe: kept")
            return
        raise AuditError(
            f"--out {out} already exists and is not empty; a trained model is never "
            "overwritten: choose a new folder"
        )
    staging = out.parent / f".{out.name}.training"
    if staging.exists():
        shutil.rmtree(staging)  # a crashed earlier attempt; it never held a finished model
    try:
        meta = run_training(staging, recipe, log=console.print)
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    console.print(f"toy model written to {out} (sha256 {meta['sha256']})")


@toy_app.command("check")
def check(
    out: Path = typer.Option(..., "--out", help="Folder for the runs and known_answers.csv."),
    model: str = typer.Option("toy", "--model", help="'toy' or a folder from `toy train`."),
    images_per_country: int = typer.Option(
        32, "--images-per-country", min=2, help="Calibration: SD images per country."
    ),
    countries: str = typer.Option(
        None, "--countries", help="Calibration countries, ISO-3 (default: all 50)."
    ),
    guard_images: int = typer.Option(
        32, "--guard-images", min=2, help="Images per prompt of the guardrail comparison."
    ),
    steps: int = typer.Option(20, "--steps", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    esd: bool = typer.Option(True, "--esd/--no-esd", help="Train and check ESD-u and ESD-x."),
    closed_form: bool = typer.Option(
        True, "--closed-form/--no-closed-form", help="Edit with UCE and RECE; report their effect."
    ),
) -> None:
    """Hold the toy model's rates, intervals and guardrail effects to the planted truth
    (about 10 minutes on 2 CPU cores); writes OUT/known_answers.csv, exits 1 on a failed row."""
    from rich.table import Table

    from analysis.probes.countries import select_countries
    from analysis.toy.check import Sizes, run_check, summary

    picked = None
    if countries:
        picked = list(select_countries([c for c in countries.split(",") if c.strip()])["iso3"])
    sizes = Sizes(
        images_per_country=images_per_country,
        guard_images=guard_images,
        steps=steps,
        batch_size=batch_size,
        esd=esd,
        closed_form=closed_form,
    )
    table = run_check(out, model=model, sizes=sizes, countries=picked)
    shown = Table(*table.columns, title=f"known answers ({out / 'known_answers.csv'})")
    for row in table.itertuples(index=False):
        shown.add_row(*(str(v) for v in row))
    console.print(shown)
    console.print(summary(table))
    if not table["passed"].astype(bool).all():
        raise typer.Exit(1)
