"""Result tables of the ethnic-bias probe: per-country rates, paired SD-vs-config tests, summary.

Files other tools read: results/nudity_rates.csv, results/paired_tests.csv, results/summary.json.
Images that failed are counted in n_missing and never enter a denominator. A country with no
discordant pairs has no McNemar test (p empty, note "untestable") and is outside the Holm/BH
family, whose size is the `family_size` column.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.classifiers import load_verdicts
from analysis.classifiers.completeness import completeness
from analysis.probes.countries import load_countries
from analysis.stats import paired_comparison, rate_table
from analysis.stats.multiple import UNTESTABLE, adjust_family, heterogeneity_test
from analysis.store import RunDir, atomic_write_text
from analysis.store.csvsafe import write_csv

RATE_COLUMNS = [
    "country",
    "iso3",
    "region",
    "config",
    "rule",
    "n",
    "nude",
    "rate",
    "ci_low",
    "ci_high",
    "ratio_to_mean",
    "n_requested",
    "n_missing",
]
PAIRED_COLUMNS = [
    "country",
    "iso3",
    "config",
    "baseline",
    "n_pairs",
    "rate_baseline",
    "rate_config",
    "difference",
    "ci_low",
    "ci_high",
    "discordant_baseline_only",
    "discordant_config_only",
    "mcnemar_p",
    "p_holm",
    "p_bh",
    "family_size",
    "note",
]


def nudity_rates(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per (country, config): n, nude, Wilson CI, ratio to the mean country rate of that config."""
    countries = load_countries().set_index("iso3")
    table = rate_table(verdicts, ["group", "config"], "verdict")
    requested = verdicts.groupby(["group", "config"]).size().rename("n_requested")
    table = table.join(requested, on=["group", "config"])
    mean_rate = table.groupby("config")["rate"].transform("mean")
    table["ratio_to_mean"] = table["rate"] / mean_rate.where(mean_rate > 0)
    table = table.rename(columns={"group": "iso3", "k": "nude"})
    table["country"] = table["iso3"].map(countries["name"]).fillna(table["iso3"])
    table["region"] = table["iso3"].map(countries["region"]).fillna("")
    table["rule"] = verdicts["rule"].iloc[0]
    return table[RATE_COLUMNS].sort_values(["config", "rate"], ascending=[True, False])


def paired_tests(verdicts: pd.DataFrame, baseline: str = "sd") -> pd.DataFrame:
    """Each config vs the baseline on the same (country, image index): difference and McNemar."""
    if baseline not in set(verdicts["config"]):
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    countries = load_countries().set_index("iso3")
    wide = verdicts.pivot_table(
        index=["group", "image_index"], columns="config", values="verdict", aggfunc="first"
    )
    rows = []
    for config in [c for c in wide.columns if c != baseline]:
        pair = wide[[baseline, config]].dropna()
        groups = [
            (g, pair.xs(g, level="group")) for g in sorted(set(pair.index.get_level_values(0)))
        ]
        for iso3, sub in [*groups, ("ALL", pair)]:
            res = paired_comparison(sub[baseline].astype(bool), sub[config].astype(bool))
            rows.append(
                {
                    "country": "all countries"
                    if iso3 == "ALL"
                    else countries["name"].get(iso3, iso3),
                    "iso3": iso3,
                    "config": config,
                    "baseline": baseline,
                    "n_pairs": res["n_pairs"],
                    "rate_baseline": res["rate_baseline"],
                    "rate_config": res["rate_config"],
                    "difference": res["difference"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "discordant_baseline_only": res["b"],
                    "discordant_config_only": res["c"],
                    "mcnemar_p": res["mcnemar_p"],
                }
            )
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    discordant = table["discordant_baseline_only"] + table["discordant_config_only"]
    testable = discordant > 0
    # an untestable row has no p-value (paired_comparison's conventional 1.0 would read as a test)
    table["mcnemar_p"] = table["mcnemar_p"].astype(float).where(testable)
    table["note"] = np.where(testable, "", UNTESTABLE)
    table["p_holm"] = np.nan
    table["p_bh"] = np.nan
    table["family_size"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    for config in table["config"].unique():
        # the family: the testable per-country tests of one config; the pooled row is not in it
        rows_ = table.index[(table["config"] == config) & (table["iso3"] != "ALL")]
        fam = adjust_family(table.loc[rows_, "mcnemar_p"], testable[rows_])
        table.loc[rows_, ["p_holm", "p_bh"]] = fam[["p_holm", "p_bh"]].to_numpy()
        table.loc[rows_, "family_size"] = fam["family_size"].to_numpy()
    return table


def _newcombe(p1: float, l1: float, u1: float, p2: float, l2: float, u2: float) -> tuple:
    """Newcombe's hybrid-score interval for p1 - p2 from two Wilson intervals."""
    d = p1 - p2
    return (
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def summary(rates: pd.DataFrame, verdicts: pd.DataFrame) -> dict[str, Any]:
    """Overall rate per config, most and least affected countries and their spread, with CIs."""
    from analysis.stats import wilson_interval

    out: dict[str, Any] = {"rule": verdicts["rule"].iloc[0], "configs": {}}
    for config, sub in rates.groupby("config"):
        n, k = int(sub["n"].sum()), int(sub["nude"].sum())
        low, high = wilson_interval(k, n)
        ranked = sub.dropna(subset=["rate"]).sort_values("rate", ascending=False)
        entry: dict[str, Any] = {
            "n": n,
            "nude": k,
            "rate": k / n if n else None,
            "ci_low": low,
            "ci_high": high,
            "mean_country_rate": float(ranked["rate"].mean()) if len(ranked) else None,
            "n_missing": int(sub["n_missing"].sum()),
            "countries": len(sub),
        }
        if len(ranked):
            top, bottom = ranked.iloc[0], ranked.iloc[-1]
            fields = ("country", "iso3", "rate", "ci_low", "ci_high", "n")
            # a country is named only when its rate is unique: an all-zero tie names nobody
            for key, row in (("most_affected", top), ("least_affected", bottom)):
                tied = ranked[ranked["rate"] == row.rate]
                if len(tied) == 1:
                    entry[key] = {f: _clean(row[f]) for f in fields}
                else:
                    entry[key] = None
                    entry[f"{key}_tied"] = {"rate": float(row.rate), "countries": len(tied)}
            lo, hi = _newcombe(
                top.rate, top.ci_low, top.ci_high, bottom.rate, bottom.ci_low, bottom.ci_high
            )
            entry["spread"] = {
                "difference": float(top.rate - bottom.rate),
                "ci_low": lo,
                "ci_high": hi,
                "method": "Newcombe hybrid score from Wilson intervals",
            }
            entry["heterogeneity"] = _clean_dict(
                heterogeneity_test(sub.dropna(subset=["rate"]), "iso3", "nude", "n")
                if len(ranked) > 1
                else {"note": "one country: no test across countries"}
            )
        out["configs"][config] = entry
    return out


def _clean_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _clean(v) for k, v in values.items()}


def _clean(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    return value


def write_results(
    run: str | Path,
    rule: str | None = None,
    baseline: str = "sd",
    out_dir: str | Path | None = None,
) -> dict[str, str]:
    """Write the three result files of a probe run; returns their paths.

    `rule`: default the run's model's (`judges.default_rule`). `out_dir` (default RUN/results)
    lets a notebook re-derive results under another rule without overwriting the run's own.
    """
    from analysis.classifiers.judges import probe_classifier

    rundir = RunDir(run)
    results_dir = Path(out_dir) if out_dir is not None else rundir.results_dir
    rule = rule or run_default_rule(rundir)
    verdicts = load_verdicts(run, probe_classifier(rule), rule)
    rates = nudity_rates(verdicts)
    paired = paired_tests(verdicts, baseline)
    summ = summary(rates, verdicts)
    summ["baseline"] = baseline
    summ["completeness"] = completeness(verdicts)
    summ["final"] = summ["completeness"]["final"]
    paths = {
        "nudity_rates": results_dir / "nudity_rates.csv",
        "paired_tests": results_dir / "paired_tests.csv",
        "summary": results_dir / "summary.json",
    }
    write_csv(rates, paths["nudity_rates"])
    write_csv(paired, paths["paired_tests"])
    atomic_write_text(paths["summary"], json.dumps(summ, indent=2, default=_clean) + "\n")
    return {k: str(v) for k, v in paths.items()}


def run_default_rule(run: RunDir) -> str:
    """The probe rule a run is judged by when none is named: its model's default."""
    from analysis.classifiers.judges import default_rule

    spec = run.read_manifest().get("spec") or {}
    return default_rule(spec.get("model"))
