"""SD vs a mitigation on the same I2P prompts and seeds: a clustered paired test per category.

An `i2p run` gives image k of a prompt the seed sd_seed + k under every config, so SD and e.g.
SLD start from the same noise. Comparing their rates as two independent samples would throw that
pairing away; McNemar on the discordant pairs uses it. But the images of one prompt are alike, so
the pairs are clustered by prompt text (as Table 1, `analysis.i2p.clusters`): the test is
Durkalski's clustered McNemar and the interval a cluster-robust one, both named in the CSV's
`test` and `interval` columns. A per-image McNemar would count 10 images as 10 independent pairs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.errors import AuditError
from analysis.i2p.clusters import CLUSTER_LABEL, cluster_key
from analysis.i2p.loader import category_masks
from analysis.i2p.table import DEFAULT_RULE, ROW_ORDER
from analysis.stats.paired import (
    CLUSTERED_INTERVAL,
    CLUSTERED_TEST,
    clustered_paired_comparison,
)

PAIRED_FILE = "i2p_paired.csv"
PAIR_KEY = ["prompt_id", "image_index"]
PAIRED_COLUMNS = [
    "baseline",
    "config",
    "category",
    "n_pairs",
    "n_clusters",
    "n_dropped",
    "rate_sd",
    "rate_config",
    "difference",
    "ci_low",
    "ci_high",
    "b10",
    "b01",
    "chi2",
    "p_value",
    "test",
    "interval",
    "nudenet_rule",
    "nudenet_threshold",
]


def pick_baseline(configs: list[str], baseline: str | None = None) -> str:
    """`baseline` if given, else 'sd' when the run has it, else its first config."""
    if baseline is not None:
        if baseline not in configs:
            raise AuditError(
                f"baseline config {baseline!r} is not in the run; configs: {', '.join(configs)}"
            )
        return baseline
    return "sd" if "sd" in configs else configs[0]


def _aligned(verdicts: pd.DataFrame, config: str) -> pd.DataFrame:
    part = verdicts[verdicts["config"] == config].copy()
    part["prompt_id"] = part["prompt_id"].astype(str)
    part["image_index"] = part["image_index"].astype(int)
    part["cluster"] = cluster_key(part).to_numpy()
    return part.set_index(PAIR_KEY)


def paired_table(
    verdicts: pd.DataFrame,
    baseline: str | None = None,
    *,
    nudenet_rule: str = DEFAULT_RULE,
    nudenet_threshold: float | None = None,
) -> pd.DataFrame:
    """Per non-baseline config and category ('all' first): paired rates, clustered test.

    Verdicts (item rows with config, prompt_id, image_index, group, verdict, and the prompt
    text when known) are aligned on (prompt_id, image_index); a pair with an NA verdict on
    either side is dropped (n_dropped), not read as "not flagged". b10 = flagged under the
    baseline only, b01 = under the config only; difference = rate_config - rate_sd. The pairs
    are clustered by prompt text (n_clusters): chi2 and p_value are Durkalski's clustered
    McNemar, ci_low/high a cluster-robust Wald interval (`analysis.stats.paired.
    clustered_paired_comparison`). rate_sd names the baseline's rate (SD unless told
    otherwise). Pairs whose seeds differ are an error: they would not share starting noise, so
    the test would not be paired.
    """
    need = {"config", "prompt_id", "image_index", "group", "verdict"}
    if missing := need - set(verdicts.columns):
        raise AuditError(f"run verdicts lack column(s) {', '.join(sorted(missing))}")
    configs = list(dict.fromkeys(verdicts["config"].astype(str)))
    if len(configs) < 2:
        raise AuditError(f"a paired test needs >= 2 configs in the run, got {configs}")
    base_name = pick_baseline(configs, baseline)
    base = _aligned(verdicts, base_name)
    if not base.index.is_unique:
        raise AuditError(f"config {base_name!r} has repeated (prompt_id, image_index) items")
    base_masks = category_masks(base["group"].astype(str).reset_index(drop=True))
    rows = []
    for config in configs:
        if config == base_name:
            continue
        other = _aligned(verdicts, config)
        if not other.index.is_unique:
            raise AuditError(f"config {config!r} has repeated (prompt_id, image_index) items")
        if "seed" in verdicts.columns:
            shared = base.index.intersection(other.index)
            seeds_a = base.loc[shared, "seed"].astype(int)
            seeds_b = other.loc[shared, "seed"].astype(int)
            if not (seeds_a.to_numpy() == seeds_b.to_numpy()).all():
                raise AuditError(
                    f"configs {base_name!r} and {config!r} use different seeds for the same "
                    "(prompt, image index): the images are not paired"
                )
        for category in ROW_ORDER:
            a = base.loc[base_masks[category], ["verdict", "cluster"]]
            b = other["verdict"].astype("boolean").reindex(a.index)
            both = a["verdict"].astype("boolean").notna() & b.notna()
            res = clustered_paired_comparison(
                a.loc[both, "verdict"].astype(bool).to_numpy(),
                b[both].astype(bool).to_numpy(),
                a.loc[both, "cluster"].to_numpy(),
            )
            rows.append(
                {
                    "baseline": base_name,
                    "config": config,
                    "category": category,
                    "n_pairs": res["n_pairs"],
                    "n_clusters": res["n_clusters"],
                    "n_dropped": int((~both).sum()),
                    "rate_sd": res["rate_baseline"],
                    "rate_config": res["rate_config"],
                    "difference": res["difference"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "b10": res["b"],
                    "b01": res["c"],
                    "chi2": res["chi2"],
                    "p_value": res["p_value"],
                    "test": f"{CLUSTERED_TEST}, clusters = {CLUSTER_LABEL}",
                    "interval": f"{CLUSTERED_INTERVAL}, clusters = {CLUSTER_LABEL}",
                    "nudenet_rule": nudenet_rule,
                    "nudenet_threshold": nudenet_threshold,
                }
            )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def run_paired(
    run: Path,
    nudenet_rule: str = DEFAULT_RULE,
    threshold: float | None = None,
    *,
    verdicts: pd.DataFrame | None = None,
    baseline: str | None = None,
) -> pd.DataFrame | None:
    """The paired table of an `i2p run`, or None when it holds a single config."""
    from analysis.classifiers.rules import check_threshold, get_rule
    from analysis.i2p.table import run_verdicts

    if verdicts is None:
        verdicts = run_verdicts(run, nudenet_rule, threshold)
    if verdicts["config"].nunique() < 2:
        return None
    rule = get_rule(nudenet_rule)
    thr = check_threshold(rule.threshold if threshold is None else threshold, rule)
    return paired_table(verdicts, baseline, nudenet_rule=rule.name, nudenet_threshold=thr)


def write_paired(paired: pd.DataFrame, out_dir: Path) -> Path:
    """i2p_paired.csv next to i2p_table.csv."""
    from analysis.store.csvsafe import write_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PAIRED_FILE
    write_csv(paired, path)
    return path
