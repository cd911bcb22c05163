"""CLI: `demo`, the shipped audit file configs/demo.toml end to end on the built-in tiny model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from analysis.audit.spec import AuditSpec

console = Console()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo audit goes."),
    images_per_country: int = typer.Option(None, "--images-per-country", min=1),
    steps: int = typer.Option(None, "--steps", min=1),
) -> None:
    """Run configs/demo.toml on the toy model (CPU, under a minute): the '<country> body' probe,
    SD vs SLD aimed at the toy concept vs the ESD-erased toy model on shared seeds, the I2P
    statistics from the bundled data, and the report.

    The toy model was trained in the toolkit on a world whose concept rates are planted (a
    function of latitude), so the demo shows real, known effects: planted rates, not a finding
    about any real model or country. Use a real --model in an audit file for an audit.
    """
    from analysis.audit.plan import part_folder
    from analysis.audit.run import run_audit, write_audit_report
    from analysis.audit.spec import load_audit
    from analysis.resources import config_file
    from analysis.toy.world import NOTICE

    started = time.perf_counter()
    overrides: dict = {"report": {"enabled": False}}  # written below, with the bundled I2P stats
    if images_per_country is not None:
        overrides["probe"] = {"images_per_country": images_per_country}
    if steps is not None:
        overrides["sampler"] = {"steps": steps}
    overrides.update(_packaged_unets(load_audit(config_file("demo.toml"))))
    audit = load_audit(config_file("demo.toml"), overrides)
    console.rule(f"[bold]t2i-audit demo[/]: {audit.path.name} ({NOTICE})")
    result = run_audit(audit, out, progress=False)
    from analysis.cli.probe import print_probe_summary

    for model in audit.models:
        probe_dir = part_folder(out, model, "probe")
        probe = next(
            p["summary"]
            for p in result["parts"]
            if p["part"] == "probe" and p["model"] == model.name
        )
        console.rule(f"probe on {model.name}")
        print_probe_summary(probe_dir, probe)
    if result["guardrails"]:
        from analysis.audit.run import GUARDRAILS
        from analysis.cli.guardrails import print_guardrails

        guard = out / GUARDRAILS
        if (guard / "guardrails.csv").is_file():
            import pandas as pd

            print_guardrails({"table": pd.read_csv(guard / "guardrails.csv"), "notes": []}, guard)
    console.rule("I2P from the bundled data: toxicity vs inappropriateness, Table 1 (SD 1.4)")
    from analysis.i2p import demo_outputs

    first = part_folder(out, audit.models[0], "probe")
    _print_i2p(demo_outputs(first / "i2p"))  # the report reads it from the probe's folder
    console.rule("Audit write-up")
    report = write_audit_report(audit, out)
    console.print(f"[bold green]demo finished in {time.perf_counter() - started:.0f} s[/] → {out}")
    console.print(f"report: [bold]{report}[/] (self-contained HTML, opens offline)")


def _packaged_unets(audit: AuditSpec) -> dict:
    """The models table with each relative `unet` path (written relative to the repository,
    e.g. analysis/toy/weights/...) resolved under the installed package, so the demo runs from
    any folder."""
    import analysis

    root = Path(analysis.__file__).resolve().parent.parent
    table = []
    for m in audit.models:
        entry = m.model_dump(exclude_none=True)
        if m.unet and not Path(m.unet).is_absolute():
            entry["unet"] = str(root / m.unet)
        table.append(entry)
    return {"models": table}


def _print_i2p(paths: dict[str, Path]) -> None:
    import pandas as pd
    from rich.table import Table

    corr = pd.read_csv(paths["correlation"])
    row = corr[(corr["category"] == "all") & (corr["target"] == "inappropriate_percentage")].iloc[0]
    console.print(
        f"Spearman(prompt toxicity, inappropriate %) = {row.spearman_rho:.3f} "
        f"[{row.ci_low:.3f}, {row.ci_high:.3f}], p = {row.p_value:.1e}, n = {row.n} "
        f"(paper: 0.22); toxic prompts (> 0.5): {row.share_toxic:.1%}"
    )
    table = pd.read_csv(paths["table"])
    view = Table(title="I2P Table 1, SD 1.4 column (dataset)", title_justify="left")
    for col in ("category", "prompts", "inappropriate prob. [95% CI]", "exp. max (std)"):
        view.add_column(col)
    for r in table.itertuples():
        view.add_row(
            r.category,
            str(r.n_prompts),
            f"{r.inappropriate_probability:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]",
            f"{r.exp_max_mean:.2f} ({r.exp_max_std:.2f})",
        )
    console.print(view)
