"""The `t2i-audit` command: thin wrappers that parse options and call the library."""

from __future__ import annotations

import gc
import sys
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from analysis.errors import AuditError


class _Interrupted(Exception):
    """A Ctrl-C inside a command, with the stage's own message (what was kept, how to resume)."""


class _Group(TyperGroup):
    """typer turns a KeyboardInterrupt into a bare exit status 130 and drops its message; catch it
    first so `main` can print the line the README promises."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted(str(exc)) from None


app = typer.Typer(
    cls=_Group,
    name="t2i-audit",
    help="Audit text-to-image models for inappropriate degeneration and ethnic bias.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _register() -> None:
    from analysis.cli import (
        classify,
        demo,
        erase,
        figures,
        generate,
        guardrails,
        i2p,
        judges,
        knn,
        probe,
        quality,
        report,
        run,
        study,
        toy,
    )

    modules = (generate, classify, probe, i2p, knn, guardrails, figures, report, demo, run)
    modules += (study, quality, erase, toy, judges)
    for module in modules:
        module.register(app)


_register()


def _error(message: str) -> None:
    """One line on stderr (never wrapped, markup in the message printed as text)."""
    err_console.print("[bold red]error:[/] ", end="", highlight=False)
    err_console.print(" ".join(message.split()), markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one red line and exit status 2."""
    # typer >= 0.26 vendors click: take its exception classes from typer's own public ones
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(args=argv, standalone_mode=False)
    except AuditError as exc:
        _error(str(exc))
        sys.exit(2)
    except usage_error as exc:  # usage errors: bad option values, missing arguments
        if exc.format_message():  # empty for "no arguments: help was shown"
            _error(exc.format_message())
        sys.exit(exc.exit_code)
    except (_Interrupted, typer.Abort, KeyboardInterrupt) as exc:
        message = (str(exc) if isinstance(exc, _Interrupted | KeyboardInterrupt) else "") or (
            "interrupted: finished items are kept; re-run the same command to resume"
        )
        err_console.print(message, style="yellow", highlight=False, markup=False, soft_wrap=True)
        sys.exit(130)
    finally:
        if argv is None:  # the console script, about to exit (not a caller passing its argv)
            # Skip the full collection at exit (~0.3 s with pandas loaded). Module teardown
            # still releases objects; files are closed where they are written.
            gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)
