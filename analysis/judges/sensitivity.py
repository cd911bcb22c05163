"""Does the conclusion depend on the judge? Every rate and paired change, re-derived per judge.

Papers cut NudeNet at 0.45, 0.6 or 0.75 on different class lists, so "config A lowers nudity"
may hold under one judge and not another. The raw detections are stored, so each conclusion
is re-derived here under every named rule (at its own cut) and along a threshold curve per
rule, with the same intervals and Holm/BH families as the main results:

- probe runs: `probes.results.nudity_rates` and `paired_tests` (per country; Holm/BH over the
  testable countries of a config), plus the overall change per config (exact McNemar,
  Agresti-Min interval), whose Holm/BH family is the testable configs of the run;
- I2P runs: Q16 OR the NudeNet rule (`i2p.table.run_verdicts`), per category the clustered
  paired test of `i2p.paired.paired_table`; Holm/BH over the testable categories of a config,
  and over the configs for the 'all' row.

- guardrail arms (`--guardrails DIR`, or probe runs of several models): the guardrail table's
  probe arms (`guardrails.table.guardrail_table`, fed each judge's verdicts through its cache),
  each against the first run's baseline; Holm/BH over the testable arms. I2P arms are left out
  (their cluster bootstrap is 10,000 draws per arm and cut); the I2P runs' own changes remain.

A *conclusion* is the direction of a config's overall change against the baseline (lower,
same, higher) and whether it is significant after Holm at ALPHA, under the reference judge
(the rule the run's own results used, at its own cut).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.errors import AuditError

if TYPE_CHECKING:
    from analysis.guardrails.arms import Arm

ALPHA = 0.05
OVERALL = "ALL"  # the unit of a config's overall change (every country / category)
GUARDRAILS = "guardrails"  # the `part` of the guardrail arms' rows
DEFAULT_THRESHOLDS = "0.25:0.95:0.05"
ROW_COLUMNS = [
    "run",
    "part",
    "rule",
    "classifier",
    "threshold",
    "own_cut",
    "config",
    "baseline",
    "unit",
    "n",
    "k",
    "rate",
    "ci_low",
    "ci_high",
    "n_pairs",
    "change",
    "change_ci_low",
    "change_ci_high",
    "p",
    "p_holm",
    "p_bh",
    "family_size",
    "test",
]
CONCLUSION_COLUMNS = [
    "run",
    "part",
    "config",
    "baseline",
    "reference_rule",
    "reference_threshold",
    "change",
    "change_ci_low",
    "change_ci_high",
    "direction",
    "p_holm",
    "significant",
    "holds_under_every_rule",
    "flips_under",
    "curve_flips",
    "rank",
    "ranking_stable",
    "rules",
]


@dataclass(frozen=True)
class Judge:
    """One verdict rule at one cut: a NudeNet rule (or the toy world's pixel rule)."""

    rule: str
    classifier: str
    threshold: float
    own_cut: bool  # the rule's published threshold (what `sensitivity.csv` holds)


def parse_thresholds(text: str, option: str = "--thresholds") -> list[float]:
    """'start:stop:step' (stop included) or 'a,b,c' -> sorted cuts, each checked against the
    stored NudeNet floor: a cut below it would silently act as the floor."""
    from analysis.classifiers.rules import check_threshold

    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not all(map(math.isfinite, parts)) or step <= 0:
                raise AuditError(f"{option} {text!r}: the step must be a positive number")
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + i * step, 10) for i in range(max(count, 0))]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise AuditError(
            f"{option} {text!r} is not START:STOP:STEP (e.g. {DEFAULT_THRESHOLDS}) nor a "
            "comma list of numbers"
        ) from None
    if not values:
        raise AuditError(f"{option} {text!r} gives no threshold (is STOP below START?)")
    try:
        checked = [check_threshold(v) for v in values]
    except AuditError as exc:
        raise AuditError(f"{option} {text!r}: {exc}") from None
    return sorted(set(checked))


def scored(run: Path, classifier: str) -> bool:
    """Whether the run has any stored scores of `classifier` (table or parts)."""
    from analysis.store import RunDir

    rd = RunDir(run)
    return (rd.scores_dir / f"{classifier}.parquet").is_file() or any(
        rd.parts_dir.glob(f"classify-{classifier}*")
    )


def run_rules(run: Path, part: str, rules: Sequence[str] | None) -> list[str]:
    """The rules to judge `run` by: those named (each checked against the stored outputs) or
    every rule whose classifier scored the run. I2P needs Q16 besides NudeNet."""
    from analysis.classifiers.judges import PROBE_RULES, probe_classifier

    usable = [r for r in PROBE_RULES if part == "probe" or PROBE_RULES[r] == "nudenet"]
    if rules:
        for rule in rules:
            classifier = probe_classifier(rule)
            if rule not in usable:
                raise AuditError(f"--rule {rule!r} does not judge the I2P run {run}")
            if not scored(run, classifier):
                raise AuditError(
                    f"--rule {rule!r} needs {classifier} scores, and {run} has none; run "
                    f"`t2i-audit classify {run} --classifier {classifier}` first"
                )
        chosen = list(dict.fromkeys(rules))
    else:
        chosen = [r for r in usable if scored(run, PROBE_RULES[r])]
    if part == "i2p" and not scored(run, "q16"):
        raise AuditError(f"{run} has no q16 scores: I2P's verdict is Q16 OR NudeNet")
    if not chosen:
        raise AuditError(
            f"{run} has no stored NudeNet (or toy) scores to re-judge; run `t2i-audit classify "
            f"{run}` first"
        )
    return chosen


def judges_of(rules: Sequence[str], thresholds: Sequence[float]) -> list[Judge]:
    """Each rule at its own cut and at every threshold of the curve (the same cut once)."""
    from analysis.classifiers.judges import probe_classifier
    from analysis.classifiers.rules import RULES
    from analysis.toy import world

    out = []
    for rule in rules:
        own = RULES[rule].threshold if rule in RULES else world.THRESHOLD
        cuts = sorted({own, *thresholds})
        out += [Judge(rule, probe_classifier(rule), t, t == own) for t in cuts]
    return out


def reference_rule(run: Path, part: str) -> str:
    """The rule the run's own results used: the probe's recorded rule, I2P's authors' rule."""
    if part == "probe":
        from analysis.guardrails.table import recorded_probe_rule

        return recorded_probe_rule(run)
    from analysis.i2p.table import DEFAULT_RULE

    return DEFAULT_RULE


def _holm_overall(rows: pd.DataFrame) -> pd.DataFrame:
    """Holm/BH over the overall changes of a run's configs (the testable ones)."""
    from analysis.stats.multiple import adjust_family

    fam = adjust_family(rows["p"], rows["p"].notna())
    rows = rows.copy()
    rows[["p_holm", "p_bh"]] = fam[["p_holm", "p_bh"]].to_numpy()
    rows["family_size"] = fam["family_size"].to_numpy()
    return rows


def probe_rows(run: Path, judge: Judge, baseline: str, items: pd.DataFrame) -> pd.DataFrame:
    """Per country and overall: rate (Wilson) per config, paired change vs the baseline."""
    from analysis.classifiers import load_verdicts
    from analysis.probes.results import nudity_rates, paired_tests
    from analysis.stats import wilson_interval

    thr = None if judge.classifier == "toy" and judge.own_cut else judge.threshold
    v = load_verdicts(run, judge.classifier, judge.rule, thr, items=items)
    rates = nudity_rates(v)
    paired = paired_tests(v, baseline).set_index(["config", "iso3"])
    rows = []
    for config, sub in rates.groupby("config", sort=False):
        n, k = int(sub["n"].sum()), int(sub["nude"].sum())
        overall = {"unit": OVERALL, "n": n, "k": k, "rate": k / n if n else np.nan}
        overall["ci_low"], overall["ci_high"] = wilson_interval(k, n)
        units = [
            {
                "unit": r.iso3,
                "n": r.n,
                "k": r.nude,
                "rate": r.rate,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
            }
            for r in sub.itertuples()
        ]
        for unit in [*units, overall]:
            row = {**unit, "config": config}
            key = (config, unit["unit"])
            if key in paired.index:
                p = paired.loc[key]
                row.update(
                    n_pairs=p["n_pairs"],
                    change=p["difference"],
                    change_ci_low=p["ci_low"],
                    change_ci_high=p["ci_high"],
                    p=p["mcnemar_p"],
                    p_holm=p["p_holm"],
                    p_bh=p["p_bh"],
                    family_size=p["family_size"],
                    test="exact McNemar, Agresti-Min interval",
                )
            rows.append(row)
    return _finish(pd.DataFrame(rows), run, "probe", judge, baseline)


def i2p_rows(run: Path, judge: Judge, baseline: str) -> pd.DataFrame:
    """Per category: rate (Wilson) per config, clustered paired change vs the baseline."""
    from analysis.i2p.loader import category_masks
    from analysis.i2p.paired import paired_table
    from analysis.i2p.table import ROW_ORDER, run_verdicts
    from analysis.stats import wilson_interval
    from analysis.stats.multiple import adjust_family

    v = run_verdicts(run, judge.rule, judge.threshold)
    paired = paired_table(v, baseline, nudenet_rule=judge.rule, nudenet_threshold=judge.threshold)
    rows = []
    for config in dict.fromkeys(v["config"]):
        part = v[v["config"] == config].reset_index(drop=True)
        masks = category_masks(part["group"].astype(str))
        for category in ROW_ORDER:
            verdict = part.loc[masks[category], "verdict"].astype("boolean").dropna()
            n, k = int(verdict.size), int(verdict.sum())
            low, high = wilson_interval(k, n)
            unit = OVERALL if category == "all" else category
            rows.append(
                {
                    "config": config,
                    "unit": unit,
                    "n": n,
                    "k": k,
                    "rate": k / n if n else np.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    table = pd.DataFrame(rows)
    if not paired.empty:
        p = paired.assign(unit=paired["category"].replace({"all": OVERALL}))
        p = p.rename(
            columns={
                "difference": "change",
                "ci_low": "change_ci_low",
                "ci_high": "change_ci_high",
                "p_value": "p",
            }
        )
        testable = (p["b10"] + p["b01"]) > 0
        p["p"] = p["p"].where(testable)
        p["p_holm"], p["p_bh"] = np.nan, np.nan
        p["family_size"] = np.nan
        for config in p["config"].unique():
            idx = p.index[(p["config"] == config) & (p["unit"] != OVERALL)]
            fam = adjust_family(p.loc[idx, "p"], testable[idx])
            p.loc[idx, ["p_holm", "p_bh", "family_size"]] = fam[
                ["p_holm", "p_bh", "family_size"]
            ].to_numpy()
        keep = [
            "config",
            "unit",
            "n_pairs",
            "change",
            "change_ci_low",
            "change_ci_high",
            "p",
            "p_holm",
            "p_bh",
            "family_size",
            "test",
        ]
        table = table.merge(p[keep], on=["config", "unit"], how="left")
    return _finish(table, run, "i2p", judge, baseline)


def _finish(table: pd.DataFrame, run: Path, part: str, judge: Judge, baseline: str) -> pd.DataFrame:
    table = table.assign(
        run=str(run),
        part=part,
        rule=judge.rule,
        classifier=judge.classifier,
        threshold=judge.threshold,
        own_cut=judge.own_cut,
        baseline=baseline,
    )
    table = table.reindex(columns=ROW_COLUMNS)
    overall = (table["unit"] == OVERALL) & (table["config"] != baseline)
    table.loc[overall] = _holm_overall(table.loc[overall])
    return table


def check_baseline(run: Path, baseline: str) -> None:
    """Every run must hold the baseline config: a change against another one is not comparable."""
    from analysis.store import RunDir

    spec = RunDir(run).read_manifest().get("spec") or {}
    configs = [str(c.get("name")) for c in spec.get("configs", []) if isinstance(c, dict)]
    if baseline not in configs:
        raise AuditError(
            f"{run} has no baseline config {baseline!r} (its configs: "
            f"{', '.join(configs) or 'none'}); every run must hold the same baseline (--baseline)"
        )


def sensitivity(
    runs: Sequence[Path],
    rules: Sequence[str] | None = None,
    thresholds: Sequence[float] = (),
    baseline: str = "sd",
    arms: Sequence[Arm] = (),
) -> dict[str, Any]:
    """Rows for every run x judge (own cuts and the curve), the conclusions and the rankings;
    with `arms` (probe arms of a guardrail table) also every arm x judge, part 'guardrails'.

    Every input is checked before any verdict is derived, so a bad one fails fast."""
    from analysis.guardrails.arms import run_part
    from analysis.store import RunDir

    plan = []
    for run in runs:
        run = Path(run)
        part = run_part(run)
        check_baseline(run, baseline)
        chosen = run_rules(run, part, rules)
        reference = reference_rule(run, part)
        if reference not in chosen:
            chosen = [reference, *chosen]
        plan.append((run, part, chosen, reference))
    guard = guardrail_plan(arms, rules, baseline) if arms else None
    frames = []
    references = {}
    for run, part, chosen, reference in plan:
        items = RunDir(run).items() if part == "probe" else None
        references[str(run)] = reference
        for judge in judges_of(chosen, thresholds):
            if part == "probe":
                frames.append(probe_rows(run, judge, baseline, items))
            else:
                frames.append(i2p_rows(run, judge, baseline))
    if guard is not None:
        base_run, chosen, reference = guard
        references.setdefault(str(base_run), reference)
        checkers: dict = {}  # the image filter's verdicts: the same under every judge
        for judge in judges_of(chosen, thresholds):
            frames.append(guardrail_rows(list(arms), judge, baseline, checkers))
    rows = pd.concat(frames, ignore_index=True)
    return {
        "rows": rows,
        "conclusions": conclusions(rows, references),
        "references": references,
    }


def guardrail_plan(
    arms: Sequence[Arm], rules: Sequence[str] | None, baseline: str
) -> tuple[Path, list[str], str]:
    """Check the guardrail arms before any verdict: the baseline arm exists, every other run
    pairs with it (same prompt, seed and image index) and scored the rules. Returns the base
    run, the rules every run can be judged by (the base run's reference first) and that one."""
    from analysis.guardrails.arms import PAIR_KEY
    from analysis.store import RunDir

    base = next((a for a in arms if a.name == baseline), None)
    if base is None:
        raise AuditError(
            f"the guardrail arms have no {baseline!r} to compare with (--baseline); present: "
            + ", ".join(a.name for a in arms)
        )
    items = RunDir(base.run).items()
    keys = set(map(tuple, items.loc[items["config"] == base.config, PAIR_KEY].to_numpy().tolist()))
    runs = list(dict.fromkeys(Path(a.run) for a in arms))
    for run in runs:
        if run == Path(base.run):
            continue
        other = set(map(tuple, RunDir(run).items()[PAIR_KEY].to_numpy().tolist()))
        if not keys & other:
            raise AuditError(
                f"{run} shares no (prompt_id, seed, image_index) with {baseline!r} of "
                f"{base.run}: its guardrail arms have no pairs (run it with the same prompts "
                "and seeds)"
            )
    reference = reference_rule(base.run, "probe")
    for run in runs:  # the reference must judge every arm: each run needs its scores
        run_rules(run, "probe", [reference])
    per_run = [run_rules(run, "probe", rules) for run in runs]
    common = [r for r in per_run[0] if all(r in other for other in per_run[1:])]
    return Path(base.run), [reference, *(r for r in common if r != reference)], reference


def guardrail_rows(
    arms: list[Arm], judge: Judge, baseline: str, checkers: dict | None = None
) -> pd.DataFrame:
    """The guardrail table under one judge: `guardrail_table` with each run's verdicts at the
    judge's rule and cut pre-filled in its cache (arm_verdicts reads them from there)."""
    from analysis.classifiers import load_verdicts
    from analysis.guardrails.arms import PAIR_KEY
    from analysis.guardrails.table import arm_verdicts, guardrail_table

    thr = None if judge.classifier == "toy" and judge.own_cut else judge.threshold
    rules: dict[str, str | None] = {"probe": judge.rule}
    cache = {} if checkers is None else checkers
    for run in dict.fromkeys(str(a.run) for a in arms):
        cache[(run, "probe", judge.rule)] = load_verdicts(run, judge.classifier, judge.rule, thr)
    table = guardrail_table(arms, baseline, rules=rules, cache=cache)
    base = next(a for a in arms if a.name == baseline)
    base_v = arm_verdicts(base, rules, cache)[[*PAIR_KEY, "verdict"]]
    testable = {}
    for arm in arms:  # a change without discordant pairs has no McNemar test (as paired_tests)
        both = base_v.merge(arm_verdicts(arm, rules, cache), on=PAIR_KEY, suffixes=("_b", ""))
        both = both.dropna(subset=["verdict_b", "verdict"])
        testable[arm.name] = bool((both["verdict_b"] != both["verdict"]).any())
    paired = table["probe_change"].notna()
    rows = pd.DataFrame(
        {
            "config": table["guardrail"],
            "unit": OVERALL,
            "n": table["probe_n"],
            "k": table["probe_flagged"],
            "rate": table["probe_rate"],
            "ci_low": table["probe_ci_low"],
            "ci_high": table["probe_ci_high"],
            "n_pairs": table["probe_n_pairs"],
            "change": table["probe_change"],
            "change_ci_low": table["probe_change_ci_low"],
            "change_ci_high": table["probe_change_ci_high"],
            "p": table["probe_mcnemar_p"].where(table["guardrail"].map(testable)),
            "test": np.where(paired, "exact McNemar, Agresti-Min interval", None),
        }
    )
    return _finish(rows, base.run, GUARDRAILS, judge, baseline)


def direction(change: float) -> str:
    """'lower', 'same' or 'higher' than the baseline ('n/a' without pairs)."""
    if change is None or (isinstance(change, float) and math.isnan(change)):
        return "n/a"
    return "lower" if change < 0 else "higher" if change > 0 else "same"


def _verdict(row: Any) -> tuple[str, bool]:
    p = row["p_holm"]
    return direction(row["change"]), bool(pd.notna(p) and p < ALPHA)


def conclusions(rows: pd.DataFrame, references: dict[str, str]) -> pd.DataFrame:
    """One row per (run, part, config): the reference conclusion and whether every judge agrees
    (part 'guardrails': one row per guardrail arm, ranked among all arms).

    holds_under_every_rule: the direction and Holm significance of the overall change are the
    same under every rule at its own cut. flips_under: the rules where they differ. curve_flips:
    per rule, the lowest threshold of its curve at which the conclusion differs from the
    reference ('rule@cut'; absent: never). ranking_stable: the order of the configs by overall
    change (most lowering first) is the same under every rule at its own cut.
    """
    overall = rows[(rows["unit"] == OVERALL) & (rows["config"] != rows["baseline"])]
    out = []
    for (run, _), sub in overall.groupby(["run", "part"], sort=False):
        ref_rule = references[str(run)]
        own = sub[sub["own_cut"]]
        rankings = {
            rule: tuple(g.sort_values(["change", "config"])["config"])
            for rule, g in own.groupby("rule", sort=False)
        }
        stable = len(set(rankings.values())) <= 1
        ref_rank = rankings.get(ref_rule, ())
        for config, cfg in sub.groupby("config", sort=False):
            ref = cfg[(cfg["rule"] == ref_rule) & cfg["own_cut"]].iloc[0]
            want = _verdict(ref)
            flips = [r["rule"] for _, r in cfg[cfg["own_cut"]].iterrows() if _verdict(r) != want]
            curve = []
            for rule, g in cfg.groupby("rule", sort=False):
                differ = [
                    r["threshold"]
                    for _, r in g.sort_values("threshold").iterrows()
                    if _verdict(r) != want
                ]
                if differ:
                    curve.append(f"{rule}@{differ[0]:g}")
            out.append(
                {
                    "run": run,
                    "part": ref["part"],
                    "config": config,
                    "baseline": ref["baseline"],
                    "reference_rule": ref_rule,
                    "reference_threshold": ref["threshold"],
                    "change": ref["change"],
                    "change_ci_low": ref["change_ci_low"],
                    "change_ci_high": ref["change_ci_high"],
                    "direction": want[0],
                    "p_holm": ref["p_holm"],
                    "significant": want[1],
                    "holds_under_every_rule": not flips,
                    "flips_under": ";".join(flips),
                    "curve_flips": ";".join(curve),
                    "rank": ref_rank.index(config) + 1 if config in ref_rank else None,
                    "ranking_stable": stable,
                    "rules": ";".join(rankings),
                }
            )
    return pd.DataFrame(out, columns=CONCLUSION_COLUMNS)
