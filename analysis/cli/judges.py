"""CLI: `judges RUN... --out DIR`, does each conclusion depend on the judge? (sensitivity and
agreement). `judges` is a group whose default command is this one, so `judges sample` and
`judges score` (analysis/cli/judges_sample.py) can sit beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

console = Console()
DEFAULT_COMMAND = "sensitivity"


class _DefaultGroup(TyperGroup):
    """`judges RUN...` runs the default command; `judges <subcommand> ...` runs that one. A run
    folder named like a subcommand can be given as ./NAME."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


judges_app = typer.Typer(
    cls=_DefaultGroup,
    help="Judges of the verdicts. `judges RUN... --out DIR` runs `judges sensitivity`: does each "
    "conclusion depend on the judge, and how far do judges agree?",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    judges_app.command(DEFAULT_COMMAND)(judges)
    import importlib
    import importlib.util

    # the labelling commands, when that module is present (an import error in it still shows)
    if importlib.util.find_spec("analysis.cli.judges_sample") is not None:
        importlib.import_module("analysis.cli.judges_sample").register(judges_app)
    app.add_typer(judges_app, name="judges")


def judges(
    runs: list[Path] = typer.Argument(
        None, help="Probe and/or I2P run folders (probe runs of several models: guardrail arms)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the CSVs, judges.json and figure."),
    rule: list[str] = typer.Option(
        None, "--rule", help="A rule to judge by (repeatable; default every rule with scores)."
    ),
    thresholds: str = typer.Option(
        "0.25:0.95:0.05", "--thresholds", help="The threshold curve: START:STOP:STEP or a,b,c."
    ),
    baseline: str = typer.Option("sd", "--baseline", help="The config changes are against."),
    guardrails: Path = typer.Option(
        None,
        "--guardrails",
        help="A `guardrails --out` folder: judge its runs and its table's probe arms.",
    ),
) -> None:
    """Re-derive every rate and paired change under every rule and along a threshold curve;
    say which conclusions hold under every judge (guardrail arms too); Cohen's/Fleiss' kappa."""
    from analysis.judges.outputs import analyse_judges, readable_conclusions

    result = analyse_judges(runs or [], out, rule or None, thresholds, baseline, guardrails)
    if result["skipped"]:
        console.print(f"judges: {out} is up to date (same runs, scores and settings); skipped")
        return
    from rich.table import Table

    readable = readable_conclusions(result["conclusions"])
    view = Table(title=f"does the conclusion depend on the judge? → {out}", title_justify="left")
    for col in readable.columns:
        view.add_column(col)
    for row in readable.itertuples(index=False):
        view.add_row(*(str(v) for v in row))
    console.print(view)
