"""The cost side of each guardrail, joined onto the guardrail table by name.

From a `quality` run (results/quality.csv): FID and CLIP distance with its interval. From a user
study (results/preferences.csv): the share of decisive answers preferring the guardrail over the
baseline, per question, with its Wilson interval. Only rows that name a guardrail of the table
are joined; the rest are reported, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.errors import AuditError
from analysis.guardrails.arms import model_label

COST_COLUMNS = [
    "fid",
    "clip_distance",
    "clip_ci_low",
    "clip_ci_high",
    "pref_quality",
    "pref_quality_ci_low",
    "pref_quality_ci_high",
    "pref_alignment",
    "pref_alignment_ci_low",
    "pref_alignment_ci_high",
]


def quality_rows(run: Path, base_model: str | None) -> pd.DataFrame:
    """guardrail, fid, clip_distance, clip_ci_low, clip_ci_high from one quality run."""
    path = Path(run) / "results" / "quality.csv"
    if not path.is_file():
        raise AuditError(f"{run} has no results/quality.csv; run `t2i-audit quality score` first")
    table = pd.read_csv(path)
    label, _ = model_label(Path(run))
    prefix = "" if base_model in (None, label) else f"{label}:"
    return pd.DataFrame(
        {
            "guardrail": prefix + table["config"].astype(str),
            "fid": table["fid"],
            "clip_distance": table["clip_distance"],
            "clip_ci_low": table["ci_low"],
            "clip_ci_high": table["ci_high"],
        }
    )


def study_rows(folder: Path, baseline: str) -> pd.DataFrame:
    """guardrail + preference columns from a study's results/preferences.csv (or the file)."""
    folder = Path(folder)
    path = folder if folder.suffix == ".csv" else folder / "results" / "preferences.csv"
    if not path.is_file():
        raise AuditError(f"{folder}: no preferences.csv; run `t2i-audit study analyse` first")
    table = pd.read_csv(path)
    rows: dict[str, dict] = {}
    for r in table.itertuples():
        if baseline not in (r.config_a, r.config_b):
            continue
        other = r.config_b if r.config_a == baseline else r.config_a
        # the interval that respects raters and pairs as clusters (the per-answer Wilson one
        # treats every answer as independent)
        share, low, high = r.share_a_decisive, r.a_decisive_cluster_low, r.a_decisive_cluster_high
        if r.config_a == baseline:  # the guardrail is b: flip the share of a
            share, low, high = 1 - share, 1 - high, 1 - low
        rows.setdefault(other, {"guardrail": other}).update(
            {
                f"pref_{r.question}": share,
                f"pref_{r.question}_ci_low": low,
                f"pref_{r.question}_ci_high": high,
            }
        )
    return pd.DataFrame(list(rows.values()))


def join_costs(
    table: pd.DataFrame,
    quality_runs: Sequence[Path] = (),
    studies: Sequence[Path] = (),
    baseline: str = "sd",
) -> tuple[pd.DataFrame, list[str]]:
    """The table with COST_COLUMNS filled where known; notes name rows that matched nothing."""
    base_model = table["model"].iloc[0] if len(table) else None
    frames = [quality_rows(Path(q), base_model) for q in quality_runs]
    frames += [study_rows(Path(s), baseline) for s in studies]
    out = table.copy()
    for col in COST_COLUMNS:
        if col not in out:
            out[col] = float("nan")
    notes = []
    known = set(out["guardrail"])
    for frame in frames:
        for row in frame.to_dict("records"):
            name = row.pop("guardrail")
            if name not in known:
                notes.append(f"cost figures for {name!r} match no guardrail of the table")
                continue
            for col, value in row.items():
                out.loc[out["guardrail"] == name, col] = value
    return out, notes
