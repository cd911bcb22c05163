"""CLI: `study make` (a blinded offline page for raters) and `study analyse` (their answers)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
study_app = typer.Typer(
    help="Blinded pairwise user study of two configs (quality, text alignment).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")


@study_app.command("make")
def make(
    run: Path = typer.Argument(..., help="Run directory holding both configs."),
    pair: str = typer.Option(..., "--pair", help="The two configs compared, as A:B."),
    prompts: Path = typer.Option(
        None, "--prompts", help="Only these prompts (text or prompt_id, one per line)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the order and left/right draw."),
    attention_checks: int = typer.Option(
        3, "--attention-checks", min=0, help="Pairs showing one image twice."
    ),
    max_side: int = typer.Option(512, "--max-side", min=16, help="Largest image side shown."),
    title: str = typer.Option("Image comparison study", "--title"),
    out: Path = typer.Option(Path("study"), "--out", help="Study folder (must not hold one)."),
) -> None:
    """Write OUT/study.html for raters; the key (OUT/key.csv, OUT/study.json) stays with you."""
    from analysis.study import make_study

    meta = make_study(run, pair, out, prompts, seed, attention_checks, max_side, title)
    console.print(
        f"study {meta['study_id']}: {meta['n_pairs']} pairs + {meta['n_attention_checks']} "
        f"attention checks\n  page for raters: {meta['html']}\n"
        f"  key (do not share): {meta['key']}"
    )


@study_app.command("analyse")
def analyse(
    answers: list[Path] = typer.Argument(..., help="CSV files exported from the study page."),
    key: Path = typer.Option(None, "--key", help="The study's key.csv (default: beside answers)."),
    out: Path = typer.Option(None, "--out", help="Results folder (default: results/ by the key)."),
    max_attention_failures: int = typer.Option(
        0, "--max-attention-failures", min=0, help="Attention answers a rater may get wrong."
    ),
) -> None:
    """Preference share with a raters x pairs bootstrap interval, Fleiss' kappa; inattentive
    raters out. Per-answer Wilson intervals and sign test are shown, labelled per answer."""
    from analysis.study import analyse_study

    result = analyse_study(answers, key, out, max_attention_failures)
    for note in result["skipped"]:
        console.print(f"[dim]skipped {note}[/]", highlight=False)
    raters = result["raters_table"]
    dropped = raters.loc[~raters["kept"], "rater"].tolist()
    console.print(
        f"{int(raters['kept'].sum())} of {len(raters)} raters kept"
        + (f"; dropped (attention checks): {', '.join(dropped)}" if dropped else "")
    )
    if not raters["kept"].any():
        console.print("[yellow]no rater passed the attention checks: nothing is counted[/]")
    a, b = result["pair"]["a"], result["pair"]["b"]
    table = Table(
        title=f"Preferences: a = {a}, b = {b}",
        caption="a of decisive and p: raters x pairs bootstrap; other CIs, sign p: per answer",
    )
    for col in ("question", "answers", "prefer a", "prefer b", "no pref."):
        table.add_column(col, justify="left" if col == "question" else "right")
    for col in ("a of decisive", "p", "sign p", "Fleiss kappa"):
        table.add_column(col, justify="right")
    for row in result["table"].to_dict(orient="records"):
        table.add_row(
            row["question"],
            str(row["n_answers"]),
            _share(row, "a"),
            _share(row, "b"),
            _share(row, "none"),
            _share(row, "a_decisive", "a_decisive_cluster"),
            _num(row["cluster_p"], ".3g"),
            _num(row["sign_test_p_per_answer"], ".3g"),
            f"{_num(row['fleiss_kappa'], '.3f')} ({row['kappa_pairs']} pairs)",
        )
    console.print(table)
    for note in result["conventions"]:
        console.print(f"- {note}", highlight=False, markup=False)
    console.print(f"written: {result['out']}/preferences.csv, raters.csv, analysis.json")


def _num(value: float, fmt: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def _share(row: dict, name: str, interval: str | None = None) -> str:
    share = row[f"share_{name}"]
    if not math.isfinite(share):
        return "n/a"
    low, high = row[f"{interval or name}_low"], row[f"{interval or name}_high"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{share:.1%} [n/a]"
    return f"{share:.1%} [{low:.1%}, {high:.1%}]"
