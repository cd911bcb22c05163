"""CLI: `run AUDIT.toml`, a whole audit declared in one file (see configs/)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from analysis.errors import AuditError

console = Console()


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    spec_file: Path = typer.Argument(..., help="The audit file (TOML), e.g. configs/demo.toml."),
    out: Path = typer.Option(
        None, "--out", help="Output folder (default: the file's `out` key); resumes if it exists."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan, what is done and a time estimate; write nothing."
    ),
    no_estimate: bool = typer.Option(
        False, "--no-estimate", help="With --dry-run: skip loading the model to time one batch."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", help="TABLE.KEY=VALUE (TOML value), e.g. probe.images_per_country=2."
    ),
) -> None:
    """Run (or, with --dry-run, plan) every model x part of an audit file, then its report."""
    from analysis.audit.run import output_dir
    from analysis.audit.spec import load_audit

    audit = load_audit(spec_file, parse_overrides(overrides or []))
    target = output_dir(audit, out)
    if dry_run:
        _print_plan(audit, target, estimate=not no_estimate)
        return
    from analysis.audit.run import run_audit

    result = run_audit(audit, target)
    table = Table(title=f"audit {spec_file} → {target}", title_justify="left")
    for column in ("model", "part", "generated now", "done", "planned", "folder"):
        table.add_column(column)
    for p in result["parts"]:
        table.add_row(
            p["model"],
            p["part"],
            str(p["generated"]),
            str(p["done"]),
            str(p["planned"]),
            p["folder"],
        )
    console.print(table)
    if result["guardrails"]:
        console.print(f"guardrail table: {result['guardrails']}", soft_wrap=True, markup=False)
    if result["report"]:
        console.print(f"report: [bold]{result['report']}[/]", soft_wrap=True)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`probe.images_per_country=2` -> {'probe': {'images_per_country': 2}}; bare words are
    strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise AuditError(f"--set {item!r}: expected TABLE.KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *tables, last = [k.strip() for k in key.split(".")]
        node = out
        for name in tables:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise AuditError(f"--set {item!r}: {name} is set twice")
        node[last] = value
    return out


def _print_plan(audit: Any, out: Path, estimate: bool) -> None:
    """The plan per model and part, with what is done and an estimate of what is left."""
    from analysis.audit.plan import batch_seconds, estimate_seconds, plan_audit

    plans = plan_audit(audit, out)
    timings: dict[str, dict[str, float] | str] = {}
    for entry in audit.models:
        if not estimate:
            timings[entry.name] = "skipped (--no-estimate)"
        elif not any(p.left for p in plans if p.model == entry.name):
            timings[entry.name] = {}
        else:
            try:
                timings[entry.name] = batch_seconds(audit, entry)
            except AuditError as exc:
                timings[entry.name] = f"no estimate: {exc}"
    view = Table(
        title=f"plan of {audit.path} → {out} (dry run: nothing is written)", title_justify="left"
    )
    for column in ("model", "part", "planned", "done", "left", "estimate (generation)", "folder"):
        view.add_column(column)
    total = 0.0
    for plan in plans:
        timing = timings[plan.model]
        if plan.note is not None:
            guess = "—"
        elif isinstance(timing, dict):
            seconds = estimate_seconds(audit, plan, timing)
            total += seconds
            guess = f"~{_duration(seconds)}"
        else:
            guess = "—"
        view.add_row(
            plan.model,
            plan.part,
            *(
                ("?", "?", "?")
                if plan.note and plan.part != "knn"
                else (str(plan.planned), str(plan.done), str(plan.left))
            ),
            guess,
            _relative(plan.folder, out),
        )
    console.print(view)
    for plan in plans:
        if plan.note:
            console.print(f"[yellow]{plan.model}/{plan.part}: {plan.note}[/]", soft_wrap=True)
    for name, timing in timings.items():
        if isinstance(timing, str):
            console.print(f"[yellow]{name}: {timing}[/]", soft_wrap=True)
    s = audit.sampler
    untimed = [n for n, t in timings.items() if isinstance(t, str)]
    guess = (
        f"no estimate for {', '.join(untimed)}"
        if untimed
        else f"estimate of the generation time left: ~{_duration(total)} on {s.device} in one "
        f"process (one batch of {s.batch_size} timed at 1 and 2 steps, extrapolated; "
        "classification and model loading not included)"
    )
    console.print(
        f"planned {sum(p.planned for p in plans)} images, done {sum(p.done for p in plans)}, "
        f"left {sum(p.left for p in plans)}; {guess}",
        highlight=False,
        soft_wrap=True,
    )


def _relative(folder: Path, out: Path) -> str:
    try:
        return str(folder.relative_to(out))
    except ValueError:
        return str(folder)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
