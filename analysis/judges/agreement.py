"""Agreement between judges that scored the same images: Cohen's kappa per pair, Fleiss' overall.

A judge is (classifier, rule, threshold): each NudeNet rule at its cut, Q16, SD's safety
checker, the toy world's detector. Two judges are compared on the images both gave a verdict
(a missing verdict is never read as "not flagged"). Kappa and its asymptotic interval come from
statsmodels (`cohens_kappa`, `fleiss_kappa`), not a re-derivation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

AGREEMENT_COLUMNS = [
    "judge_a",
    "judge_b",
    "n",
    "agreement",
    "kappa",
    "ci_low",
    "ci_high",
    "n11",
    "n10",
    "n01",
    "n00",
    "method",
]
#: classifiers whose verdict does not depend on a NudeNet rule
OTHER_CLASSIFIERS = ("q16", "safety-checker", "toy", "toy-filter")


def judge_name(classifier: str, rule: str | None, threshold: float | None) -> str:
    """'nudenet:i2p-exposed@0.5', 'q16', 'toy:toy-magenta-fraction@0.25'."""
    if rule is None or classifier in ("q16", "safety-checker"):
        return classifier
    return f"{classifier}:{rule}" + (f"@{threshold:g}" if threshold is not None else "")


def cohen(a: pd.Series, b: pd.Series) -> dict:
    """2x2 table, agreement and Cohen's kappa with statsmodels' asymptotic 95% interval on the
    items both judged. Kappa is undefined (NaN) when chance agreement is 1 (both constant)."""
    from statsmodels.stats.inter_rater import cohens_kappa

    both = pd.concat([a.astype("boolean"), b.astype("boolean")], axis=1, join="inner").dropna()
    x = both.iloc[:, 0].astype(bool).to_numpy()
    y = both.iloc[:, 1].astype(bool).to_numpy()
    n11, n10 = int(np.sum(x & y)), int(np.sum(x & ~y))
    n01, n00 = int(np.sum(~x & y)), int(np.sum(~x & ~y))
    n = n11 + n10 + n01 + n00
    out = {"n": n, "n11": n11, "n10": n10, "n01": n01, "n00": n00}
    out["agreement"] = (n11 + n00) / n if n else math.nan
    out["kappa"] = out["ci_low"] = out["ci_high"] = math.nan
    out["method"] = "Cohen's kappa, asymptotic interval (statsmodels cohens_kappa)"
    pe = ((n11 + n10) * (n11 + n01) + (n01 + n00) * (n10 + n00)) / n**2 if n else 1.0
    if n and pe < 1:
        res = cohens_kappa(np.array([[n11, n10], [n01, n00]]))
        out["kappa"] = float(res.kappa)
        # the Wald interval can pass +-1 near the ends; kappa itself cannot
        out["ci_low"] = max(-1.0, float(res.kappa_low))
        out["ci_high"] = min(1.0, float(res.kappa_upp))
    elif n:
        out["method"] = "undefined: both judges give one verdict to every image"
    return out


def fleiss(verdicts: pd.DataFrame) -> dict:
    """Fleiss' kappa across every judge (columns) on the images every judge scored."""
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    complete = verdicts.astype("boolean").dropna()
    row = {"judge_a": "all judges", "judge_b": f"{verdicts.shape[1]} judges", "n": len(complete)}
    row["method"] = "Fleiss' kappa (statsmodels fleiss_kappa), images every judge scored"
    x = complete.astype(bool).to_numpy(dtype=int)
    row["agreement"] = float(np.mean(x.min(axis=1) == x.max(axis=1))) if len(x) else math.nan
    counts = aggregate_raters(x, n_cat=2)[0] if len(x) else None
    p = counts.sum(axis=0) / counts.sum() if counts is not None else None
    if p is not None and (p > 0).all():
        row["kappa"] = float(fleiss_kappa(counts, method="fleiss"))
    else:
        row["kappa"] = math.nan
    return row


def agreement_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Every pair of judges (columns of `verdicts`, indexed by image), then Fleiss' row."""
    rows = [
        {"judge_a": a, "judge_b": b, **cohen(verdicts[a], verdicts[b])}
        for a, b in combinations(verdicts.columns, 2)
    ]
    if verdicts.shape[1] >= 2:
        rows.append(fleiss(verdicts))
    table = pd.DataFrame(rows).reindex(columns=AGREEMENT_COLUMNS)
    for col in ("n", "n11", "n10", "n01", "n00"):
        table[col] = table[col].astype("Int64")  # counts stay whole (Fleiss' row has no table)
    return table


def run_judges(run: Path, rules: Sequence[str]) -> pd.DataFrame:
    """Per item_id, one column per judge that scored `run`: each rule at its own cut, then
    every other classifier with scores."""
    from analysis.classifiers import load_verdicts
    from analysis.classifiers.judges import probe_classifier
    from analysis.judges.sensitivity import scored
    from analysis.store import RunDir

    items = RunDir(run).items()
    columns: dict[str, pd.Series] = {}
    for rule in rules:
        v = load_verdicts(run, probe_classifier(rule), rule, items=items)
        name = judge_name(v["classifier"].iloc[0], rule, v["threshold"].iloc[0])
        columns[name] = v.set_index("item_id")["verdict"]
    for classifier in OTHER_CLASSIFIERS:
        if classifier == "toy" and any(probe_classifier(r) == "toy" for r in rules):
            continue
        if scored(run, classifier):
            v = load_verdicts(run, classifier, items=items)
            thr = v["threshold"].iloc[0]
            name = judge_name(classifier, v["rule"].iloc[0], None if pd.isna(thr) else thr)
            columns[name] = v.set_index("item_id")["verdict"]
    return pd.DataFrame(columns)


def agreement(runs: Sequence[Path], rules_per_run: dict[str, list[str]]) -> pd.DataFrame:
    """Pairwise and Fleiss agreement per run (a `run` column), on the images of that run."""
    frames = []
    for run in runs:
        table = agreement_table(run_judges(Path(run), rules_per_run[str(run)]))
        frames.append(table.assign(run=str(run)))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return out.reindex(columns=["run", *AGREEMENT_COLUMNS])
