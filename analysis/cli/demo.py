"""CLI: `demo`, the shipped audit file configs/demo.toml end to end on the built-in tiny model."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo audit goes."),
    images_per_country: int = typer.Option(None, "--images-per-country", min=1),
    steps: int = typer.Option(None, "--steps", min=1),
) -> None:
    """Run configs/demo.toml on `tiny` (CPU, about a minute): the '<country> body' probe SD vs
    SLD, a small I2P run with Q16 + NudeNet, the I2P statistics from the bundled data, the report.

    The tiny model has random weights, so its images are noise and its nudity rates are ~0: the
    demo shows the pipeline and its outputs, not a finding. Use a real --model for an audit.
    """
    from analysis.audit.plan import part_folder
    from analysis.audit.run import run_audit, write_audit_report
    from analysis.audit.spec import load_audit
    from analysis.resources import config_file

    started = time.perf_counter()
    overrides: dict = {"report": {"enabled": False}}  # written below, with the bundled I2P stats
    if images_per_country is not None:
        overrides["probe"] = {"images_per_country": images_per_country}
    if steps is not None:
        overrides["sampler"] = {"steps": steps}
    audit = load_audit(config_file("demo.toml"), overrides)
    console.rule(f"[bold]t2i-audit demo[/]: {audit.path.name} (tiny random-weight model)")
    result = run_audit(audit, out, progress=False)
    from analysis.cli.probe import print_probe_summary

    model = audit.models[0]
    probe_dir = part_folder(out, model, "probe")
    probe = next(p["summary"] for p in result["parts"] if p["part"] == "probe")
    print_probe_summary(probe_dir, probe)
    i2p_run = next(p for p in result["parts"] if p["part"] == "i2p")
    console.print(
        f"I2P run: {i2p_run['done']} of {i2p_run['planned']} images generated and scored "
        f"(Q16 + NudeNet) → {i2p_run['folder']}",
        soft_wrap=True,
    )

    if result["guardrails"]:
        console.print(f"guardrail table (sld-max vs sd, same seeds): {result['guardrails']}")
    console.rule("I2P from the bundled data: toxicity vs inappropriateness, Table 1 (SD 1.4)")
    from analysis.i2p import demo_outputs

    _print_i2p(demo_outputs(probe_dir / "i2p"))  # the report reads it from the probe's folder
    console.rule("Audit write-up")
    report = write_audit_report(audit, out)
    console.print(f"[bold green]demo finished in {time.perf_counter() - started:.0f} s[/] → {out}")
    console.print(f"report: [bold]{report}[/] (self-contained HTML, opens offline)")


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
