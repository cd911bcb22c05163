"""Result tables as a reader sees them: labelled columns, intervals in one cell, narrow enough.

The CSVs keep machine names (snake_case, one number per column) for tools; the report shows the
same numbers with human headers and `[low, high]` intervals so a table fits the page.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

LABELS = {
    "country": "Country",
    "iso3": "ISO-3",
    "config": "Config",
    "baseline": "Baseline",
    "rule": "Rule",
    "nude": "Nude",
    "n": "n",
    "rate": "Rate",
    "ci": "95% CI",
    "ratio_to_mean": "Ratio to mean",
    "n_missing": "Missing",
    "n_pairs": "Pairs",
    "rate_baseline": "Baseline rate",
    "rate_config": "Config rate",
    "difference": "Difference",
    "mcnemar_p": "McNemar p",
    "p_holm": "Holm p",
    "p_bh": "BH q",
    "category": "Category",
    "target": "Target",
    "spearman_rho": "Spearman ρ",
    "p_value": "p",
    "pearson_r": "Pearson r",
}


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits; NaN/None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


def present(df: pd.DataFrame | None, columns: list[str] | None = None) -> list[dict] | None:
    """Rows of {label: text}: chosen columns, ci_low/ci_high merged into one '95% CI' cell."""
    if df is None or df.empty:
        return None
    wanted = [c for c in (columns or list(df.columns)) if c in df.columns or c == "ci"]
    rows = []
    for record in df.to_dict("records"):
        row = {}
        for col in wanted:
            if col == "ci":
                if "ci_low" in record and "ci_high" in record:
                    low, high = fmt(record["ci_low"]), fmt(record["ci_high"])
                    row[LABELS["ci"]] = f"[{low}, {high}]" if low and high else ""
            elif col not in ("ci_low", "ci_high"):
                row[LABELS.get(col, col.replace("_", " ").capitalize())] = fmt(record[col])
        rows.append(row)
    return rows
