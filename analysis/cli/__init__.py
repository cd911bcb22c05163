"""The `t2i-audit` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from analysis.errors import AuditError

app = typer.Typer(
    name="t2i-audit",
    help="Audit text-to-image models for inappropriate degeneration and ethnic bias.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _register() -> None:
    from analysis.cli import (
        classify,
        demo,
        figures,
        generate,
        i2p,
        knn,
        probe,
        report,
    )

    for module in (generate, classify, probe, i2p, knn, figures, report, demo):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point: user errors become one red line and exit status 2."""
    try:
        app()
    except AuditError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        message = (
            str(exc) or "interrupted: finished items are kept; re-run the same command to resume"
        )
        err_console.print(f"[yellow]{message}[/]", highlight=False)
        sys.exit(130)
