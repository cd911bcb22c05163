"""CLI: `guardrails RUN...`, every guardrail against SD on the same seeds, with its cost."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("guardrails")(guardrails)


def guardrails(
    runs: list[Path] = typer.Argument(
        ..., help="Probe and/or I2P run folders, one per model (e.g. SD and an ESD UNet)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Folder for guardrails.csv/.json/.md/.tex + figure."
    ),
    quality: list[Path] = typer.Option(
        None, "--quality", help="A `quality` run: FID and CLIP distance per config."
    ),
    study: list[Path] = typer.Option(
        None, "--study", help="A user-study folder (after `study analyse`)."
    ),
    baseline: str = typer.Option(
        "sd", "--baseline", help="The guardrail others are compared with."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the I2P cluster bootstrap."),
    probe_rule: str = typer.Option(None, "--probe-rule", help="NudeNet rule (default: the run's)."),
    i2p_rule: str = typer.Option(None, "--i2p-rule", help="NudeNet rule for I2P (i2p-authors)."),
    text_filter: Path = typer.Option(
        None,
        "--text-filter",
        help="Blocked terms (one per line, whole words, any case): adds <config>+text-filter.",
    ),
) -> None:
    """Guardrail table: nudity rate, I2P share, block rate and the paired change vs SD (with
    intervals), next to FID, CLIP distance and user preference when given."""
    from analysis.guardrails import compare_guardrails
    from analysis.i2p.text_filter import read_terms

    terms = tuple(read_terms(text_filter)) if text_filter is not None else ()
    result = compare_guardrails(
        runs,
        out,
        quality=quality or [],
        studies=study or [],
        baseline=baseline,
        seed=seed,
        probe_rule=probe_rule,
        i2p_rule=i2p_rule,
        text_terms=terms,
    )
    print_guardrails(result, out)


def print_guardrails(result: dict, folder: Path) -> None:
    """The readable guardrail table on the console, and where its files are."""
    from rich.table import Table

    from analysis.guardrails.outputs import readable_table

    readable = readable_table(result["table"])
    view = Table(title=f"guardrails vs sd (same seeds) → {folder}", title_justify="left")
    for col in readable.columns:
        view.add_column(col)
    for row in readable.itertuples(index=False):
        view.add_row(*(str(v) for v in row))
    console.print(view)
    for note in result["notes"]:
        console.print(f"[yellow]{note}[/]", soft_wrap=True)
