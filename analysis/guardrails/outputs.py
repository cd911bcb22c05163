"""Write the guardrail comparison: CSV with a JSON echo, a readable Markdown/LaTeX table, a figure.

The CSV keeps every number; the readable tables show value [interval] in labelled columns, and
only the columns that have data, so a part that did not run is absent rather than empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.guardrails.arms import Arm, describe
from analysis.guardrails.table import CONVENTIONS
from analysis.store import atomic_write_text
from analysis.store.csvsafe import write_csv

STEM = "guardrails"
#: readable column -> (value, low, high) in the CSV, a percentage or a plain number
READABLE = [
    ("Probe nudity rate", ("probe_rate", "probe_ci_low", "probe_ci_high"), "pct"),
    ("Change vs SD (probe)", ("probe_change", "probe_change_ci_low", "probe_change_ci_high"), "pp"),
    ("I2P inappropriate", ("i2p_rate", "i2p_ci_low", "i2p_ci_high"), "pct"),
    ("Change vs SD (I2P)", ("i2p_change", "i2p_change_ci_low", "i2p_change_ci_high"), "pp"),
    ("Attack success (I2P)", ("i2p_asr", "i2p_asr_ci_low", "i2p_asr_ci_high"), "pct"),
    ("Blocked by filter", ("block_rate", "block_ci_low", "block_ci_high"), "pct"),
    ("Nudity among passed", ("residual_rate", "residual_ci_low", "residual_ci_high"), "pct"),
    ("FID", ("fid", None, None), "num"),
    ("CLIP distance", ("clip_distance", "clip_ci_low", "clip_ci_high"), "num"),
    ("Preferred (quality)", ("pref_quality", "pref_quality_ci_low", "pref_quality_ci_high"), "pct"),
    (
        "Preferred (text)",
        ("pref_alignment", "pref_alignment_ci_low", "pref_alignment_ci_high"),
        "pct",
    ),
]


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "pp":
        return f"{100 * value:+.1f} pp"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """Guardrail, family, then 'value [low, high]' per measured column (empty columns left out),
    and how many images have no verdict yet when any lack one (the numbers are not final)."""
    out = pd.DataFrame({"Guardrail": table["guardrail"], "Kind": table["family"]})
    for label, (value, low, high), kind in READABLE:
        if value not in table or table[value].isna().all():
            continue
        cells = []
        for r in table.to_dict("records"):
            cell = _fmt(r.get(value), kind)
            if low and cell != "–" and not pd.isna(r.get(low)):
                cell += f" [{_fmt(r[low], kind)}, {_fmt(r[high], kind)}]"
            cells.append(cell)
        out[label] = cells
    missing = [c for c in ("probe_n_missing", "i2p_n_missing") if c in table]
    if any(table[c].fillna(0).gt(0).any() for c in missing):  # not final: say how much is open
        out["Images without verdict"] = [
            " / ".join(f"{int(r[c])} {c.split('_')[0]}" for c in missing if not pd.isna(r[c]))
            for r in table.to_dict("records")
        ]
    return out


def write_guardrails(
    table: pd.DataFrame, arms: list[Arm], out: Path, notes: list[str], baseline: str
) -> list[Path]:
    """results: guardrails.csv, guardrails.json (conventions, arms, notes), .md and .tex;
    the paper figure beside them."""
    from analysis.figures.latex import write_tex

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    csv = out / f"{STEM}.csv"
    write_csv(table, csv)
    echo = {
        "baseline": baseline,
        "conventions": CONVENTIONS,
        "arms": [describe(a) for a in arms],
        # what `judges --guardrails DIR` needs to rebuild the same arms (arms_of's inputs),
        # absolute so it works from any folder
        "runs": list(dict.fromkeys(str(Path(a.run).resolve()) for a in arms)),
        "labels": {str(Path(a.run).resolve()): a.model for a in arms},
        "text_terms": list(next((a.terms for a in arms if a.terms), ())),
        "notes": notes,
        "columns": {label: list(filter(None, cols)) for label, cols, _ in READABLE},
    }
    meta = out / f"{STEM}.json"
    atomic_write_text(meta, json.dumps(echo, indent=2, default=str) + "\n")
    readable = readable_table(table)
    md = out / f"{STEM}.md"
    atomic_write_text(md, markdown_table(readable) + "\n")
    written += [csv, meta, md, write_tex(guardrails_tex(readable), out / f"{STEM}.tex")]
    from analysis.figures.notice import run_notice, stamp_matplotlib
    from analysis.figures.static import save_static
    from analysis.guardrails.figure import guardrail_figure

    # the arms' runs, not the output folder, say whether the figure needs a notice (toy model)
    notices = sorted({n for a in arms if (n := run_notice(a.run))})
    figure = stamp_matplotlib(guardrail_figure(table), "; ".join(notices) or None)
    written += save_static(figure, out / f"paper_{STEM}")
    return written


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table; a '|' inside a cell is escaped so a hostile name cannot add a column."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def guardrails_tex(readable: pd.DataFrame) -> str:
    """booktabs table of the readable columns (values already formatted, escaped here)."""
    from analysis.figures.latex import escape_latex

    cols = list(readable.columns)
    lines = [
        "\\begin{tabular}{" + "ll" + "r" * (len(cols) - 2) + "}",
        "\\toprule",
        " & ".join(escape_latex(c) for c in cols) + " \\\\",
        "\\midrule",
    ]
    for row in readable.itertuples(index=False):
        lines.append(" & ".join(escape_latex(str(v)) for v in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)
