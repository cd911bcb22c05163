"""CLI: `report`, the self-contained audit write-up of one or more runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    runs: list[Path] = typer.Argument(..., help="Run directories."),
    out: Path = typer.Option(Path("report.html"), "--out"),
    fmt: str = typer.Option("html", "--format", help="html (self-contained) or md."),
    no_blur: bool = typer.Option(False, "--no-blur", help="Show flagged sample images unblurred."),
    title: str = typer.Option(None, "--title"),
    guardrails: Path = typer.Option(
        None, "--guardrails", help="A `t2i-audit guardrails --out` folder to include."
    ),
    judges: Path = typer.Option(
        None,
        "--judges",
        help="A `t2i-audit judges --out` folder: does the conclusion depend on the judge?",
    ),
) -> None:
    """Provenance, methods, results with intervals, figures and (blurred) samples in one file."""
    from analysis.report import write_report
    from analysis.store.ownership import check_output

    check_output(out, inputs=[*runs, guardrails, judges])
    path = write_report(
        runs, out, fmt=fmt, blur=not no_blur, title=title, guardrails=guardrails, judges=judges
    )
    console.print(f"report written: {path} ({path.stat().st_size / 1e6:.1f} MB)")
