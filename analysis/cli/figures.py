"""CLI: `figures`, redraw every figure from result files (no GPU, no model)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from analysis.errors import AuditError

console = Console()


def register(app: typer.Typer) -> None:
    app.command("figures")(figures)


def figures(
    runs: list[Path] = typer.Argument(None, help="Run directories to redraw."),
    all_: bool = typer.Option(
        False,
        "--all",
        help="Regenerate the repository's figures/ from bundled data + the demo run.",
    ),
    out: Path = typer.Option(Path("figures"), "--out", help="With --all: where figures go."),
) -> None:
    """Redraw figures from RUN/results/*.csv (or, with --all, the top-level figures/ folder)."""
    written: list[Path] = []
    if all_:
        from analysis.figures.regenerate import regenerate_all
        from analysis.store.ownership import check_output

        written += regenerate_all(check_output(out, inputs=runs or [], folder=True))
    from analysis.figures import draw_all

    for run in runs or []:
        written += draw_all(run)
    if not written:
        raise AuditError("give one or more run directories, or --all")
    for path in written:
        console.print(f"  {path}")
    console.print(f"[green]{len(written)} figure files written[/]")
