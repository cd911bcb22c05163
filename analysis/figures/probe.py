"""The ethnic-bias probe's figures, drawn from RUN/results/*.csv alone (no GPU, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis.errors import AuditError
from analysis.figures.charts import dumbbells, ranked_dots
from analysis.figures.export import save_figure
from analysis.figures.maps import rate_map


def has_results(run: Path) -> bool:
    return (Path(run) / "results" / "nudity_rates.csv").is_file()


def draw_figures(run: str | Path) -> list[Path]:
    """World map per config, ranked intervals, SD-vs-config dumbbells into RUN/figures/."""
    run = Path(run)
    if not has_results(run):
        raise AuditError(
            f"{run} has no results/nudity_rates.csv; run `t2i-audit probe ethnic-bias ... --out "
            f"{run}` (or its results step) first"
        )
    rates = _read_table(run / "results" / "nudity_rates.csv")
    paired = _read_table(run / "results" / "paired_tests.csv")
    rule = rates["rule"].iloc[0] if len(rates) else ""
    mark = _provisional_mark(run)
    out = run / "figures"
    written = []
    written += save_figure(
        rate_map(rates, f"Nudity rate per country ({rule}){mark}"), out / "nudity_map"
    )
    written += save_figure(
        ranked_dots(rates, f"Nudity rate per country and config ({rule}){mark}"),
        out / "nudity_rates_ranked",
    )
    written += save_figure(
        dumbbells(paired, rates, f"SD vs mitigation on the same seeds{mark}"),
        out / "nudity_dumbbell",
    )
    written += draw_paper_figures(rates, paired, run, mark)
    return written


def _read_table(path: Path) -> pd.DataFrame:
    """A results CSV, or one line naming the file and what is wrong with it."""
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise AuditError(f"{path} is missing; re-run the probe's results step") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise AuditError(f"{path} is not a readable results table: {reason}") from None
    needed = {"nudity_rates.csv": {"iso3", "config", "rate", "n"}}.get(path.name, set())
    if needed - set(table.columns):
        raise AuditError(
            f"{path} lacks the column(s) {', '.join(sorted(needed - set(table.columns)))}"
        )
    return table


def _provisional_mark(run: Path) -> str:
    """' (PROVISIONAL: ...)' for results written while images or verdicts were missing."""
    path = run / "results" / "summary.json"
    if not path.is_file():
        return ""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path} is not valid JSON: {exc}") from None
    counts = summary.get("completeness")
    if summary.get("final", True) or not counts:
        return ""
    missing = counts.get("not_generated", 0) + counts.get("not_scored", 0)
    return f" (PROVISIONAL: {missing} of {counts.get('planned')} images without a verdict yet)"


def draw_paper_figures(
    rates: pd.DataFrame, paired: pd.DataFrame, run: Path, mark: str = ""
) -> list[Path]:
    """Static PDF/SVG/PNG versions for the paper into RUN/figures/ and the LaTeX table into
    RUN/results/ (beside nudity_rates.csv), from the same tables as the plotly figures. The
    country figure shows the dataset side too when the run has a kNN result."""
    import re

    from analysis.figures.latex import rates_table_tex, write_tex
    from analysis.figures.paper_dataset import with_dataset
    from analysis.figures.static import (
        country_rates_figure,
        dumbbell_figure,
        rate_map_figure,
        save_static,
    )

    out = run / "figures"
    data_file = run / "results" / "dataset_nudity_rates.csv"
    data_rates = _read_table(data_file) if data_file.is_file() else None
    written: list[Path] = []
    written += save_static(
        country_rates_figure(with_dataset(rates, data_rates), mark.strip()),
        out / "paper_country_rates",
    )
    written += save_static(dumbbell_figure(paired, mark.strip()), out / "paper_dumbbell")
    vmax = float(rates["rate"].max(skipna=True)) if len(rates) else 0.0
    for config in dict.fromkeys(rates["config"].astype(str)):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", config)
        fig = rate_map_figure(rates, config, f"{config}{mark}", vmax=vmax)
        written += save_static(fig, out / f"paper_map_{stem}")
    written.append(write_tex(rates_table_tex(rates), run / "results" / "nudity_rates.tex"))
    return written
