"""CLI: `judges sample` (a stratified, blinded labelling page) and `judges score` (each judge
against the human labels). `register(judges_app)` adds both to the `judges` group."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(judges_app: typer.Typer) -> None:
    judges_app.command("sample")(sample)
    judges_app.command("score")(score)


def sample(
    run: Path = typer.Argument(..., help="Run directory with classifier scores."),
    n: int = typer.Option(..., "--n", help="Images to draw (at least one per stratum)."),
    out: Path = typer.Option(..., "--out", help="Sample folder (must not hold one)."),
    judge: list[str] = typer.Option(
        None, "--judge", help="Judges to stratify by (nudenet:<rule>, q16, toy...); default all."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the draws and their order."),
    question: str = typer.Option(None, "--question", help="The yes/no question raters answer."),
    max_side: int = typer.Option(256, "--max-side", min=16, help="Largest image side shown."),
) -> None:
    """Draw a sample stratified by config and judges' verdicts; write OUT/label.html for raters
    and keep the key (OUT/sample.csv, OUT/sample.json, with the weights) with you."""
    from analysis.judges.sample import make_sample

    meta = make_sample(run, n, out, judge or None, seed, question, max_side)
    console.print(
        f"sample {meta['sample']}: {meta['n']} of {meta['population']} images in "
        f"{len(meta['strata'])} strata ({', '.join(meta['judges'])})\n"
        f"  page for raters: {meta['html']}\n  key (do not share): {meta['key']}",
        highlight=False,
    )


def score(
    folder: Path = typer.Argument(..., help="The sample folder written by `judges sample`."),
    labels: list[Path] = typer.Argument(..., help="Labels CSV files exported from the page."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the stratified bootstrap."),
    n_boot: int = typer.Option(2000, "--n-boot", min=100, help="Bootstrap draws."),
) -> None:
    """Each judge's precision, recall and F1 against the human labels (weighted by the sample's
    strata, stratified-bootstrap 95% intervals), and inter-rater agreement."""
    from analysis.judges.labels import score_sample

    result = score_sample(folder, labels, seed, n_boot)
    console.print(
        f"{result['n_labelled']} of {result['n_sample']} images have a human label "
        f"({result['n_tied']} tied, {result['n_only_unsure']} only unsure, "
        f"{result['n_no_label']} unlabelled)",
        highlight=False,
    )
    table = Table(title=f"Judges against human labels (sample {result['sample']})")
    for col in ("judge", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "judge" else "right")
    for row in result["table"].to_dict(orient="records"):
        table.add_row(row["judge"], *(_ci(row, m) for m in ("precision", "recall", "f1")))
    console.print(table)
    agree = result["agreement"]
    if agree is not None and agree["kappa"] is not None:
        console.print(
            f"{agree['statistic'].capitalize()}'s kappa {agree['kappa']:.3f} "
            f"({len(agree['raters'])} raters, {agree['n_items']} images)",
            highlight=False,
        )
    for note in result["conventions"]:
        console.print(f"- {note}", highlight=False, markup=False)
    console.print(f"written: {result['out']}/judge_quality.csv, judge_quality.json")


def _ci(row: dict, metric: str) -> str:
    value, low, high = row[metric], row[f"{metric}_low"], row[f"{metric}_high"]
    if not math.isfinite(value):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f} [n/a]"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"
