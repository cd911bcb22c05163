"""The report's "Key findings": the largest differences, with their intervals, in a few lines.

Read from the tables the run already wrote (results/paired_tests.csv, results/nudity_rates.csv,
a guardrail folder's guardrails.csv): nothing is recomputed here, so a line always agrees with
the table below it. The wording claims only what an interval supports: a change whose 95%
interval contains 0 is "not distinguishable from no change", two groups whose Wilson intervals
overlap are "not distinguishable" either; a run where no image was flagged says so in one line,
and an unfinished run's findings are called provisional. Lines are plain text: the HTML
template autoescapes them and the Markdown one escapes them (`markdown.md_text`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from analysis.errors import AuditError
from analysis.probes.results import PAIRED_COLUMNS, RATE_COLUMNS

Kind = Literal["paired", "spread", "guardrail", "zero", "status"]
MAX_LINES = 6  # the section's length, status lines included
PER_KIND = 2  # each kind of comparison gets this many lines before others get more
NO_CHANGE = "not distinguishable from no change"
NO_DIFFERENCE = "intervals overlap: not distinguishable from no difference"

#: the numeric columns of the probe's results tables (`analysis.probes.results`)
_TEXT = {"country", "iso3", "region", "config", "baseline", "rule", "note"}
RATE_NUMBERS = tuple(c for c in RATE_COLUMNS if c not in _TEXT)
PAIRED_NUMBERS = tuple(c for c in PAIRED_COLUMNS if c not in _TEXT)
PAIRED_NEEDS = (
    "iso3",
    "config",
    "baseline",
    "rate_baseline",
    "rate_config",
    "difference",
    "ci_low",
    "ci_high",
    "mcnemar_p",
)
RATES_NEEDS = ("config", "rate", "ci_low", "ci_high", "n", "nude")
GUARDRAIL_PARTS = {  # part label -> (change, low, high, p) columns of guardrails.csv
    "probe": ("probe_change", "probe_change_ci_low", "probe_change_ci_high", "probe_mcnemar_p"),
    "I2P": ("i2p_change", "i2p_change_ci_low", "i2p_change_ci_high", None),
}


@dataclass(frozen=True)
class Finding:
    """One line of the section. `size` orders lines of one kind (largest first); `clear` says
    whether the interval excludes no change (a finding) or not."""

    kind: Kind
    text: str
    size: float = 0.0
    clear: bool = False


@dataclass(frozen=True)
class RunTables:
    """What one run contributes: its name, its results tables (None: not written) and state."""

    name: str
    rates: pd.DataFrame | None
    paired: pd.DataFrame | None
    provisional: bool = False


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def pp(value: float) -> str:
    return f"{100 * value:+.1f}"


def p_text(p: float) -> str:
    return "McNemar p untestable (no discordant pairs)" if math.isnan(p) else f"McNemar p = {p:.2g}"


def excludes_zero(low: float, high: float) -> bool:
    """True when [low, high] lies wholly above or wholly below 0 (0 on an end is included)."""
    return low > 0 or high < 0


def numeric(table: pd.DataFrame, columns: tuple[str | None, ...], where: str) -> pd.DataFrame:
    """The named columns as numbers (empty cells NaN); text in one is a one-line error naming
    `where` and the column. Columns absent or already numeric are left as they are."""
    out = table.copy()
    for col in columns:
        if col is None or col not in out or pd.api.types.is_numeric_dtype(out[col]):
            continue
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna()
        if bad.any():
            raise AuditError(
                f"{where}: column {col} holds {out[col][bad].iloc[0]!r:.40}, not a number"
            )
        out[col] = values.astype(float)
    return out


def _missing(table: pd.DataFrame, needs: tuple[str, ...], where: str) -> Finding | None:
    lacks = [c for c in needs if c not in table]
    if not lacks:
        return None
    return Finding("status", f"{where} lacks {', '.join(lacks)}: no findings are read from it.")


def _prefix(run: str | None) -> str:
    return f"{run}: " if run else ""


def paired_findings(paired: pd.DataFrame | None, run: str | None = None) -> list[Finding]:
    """Each config vs the baseline over all groups (the pooled 'ALL' row), largest first."""
    if paired is None or paired.empty:
        return []
    where = f"{_prefix(run)}results/paired_tests.csv"
    if (gap := _missing(paired, PAIRED_NEEDS, where)) is not None:
        return [gap]
    cols = ("rate_baseline", "rate_config", "difference", "ci_low", "ci_high", "mcnemar_p")
    table = numeric(paired, (*cols, "n_pairs"), where)
    pooled = table[(table["iso3"] == "ALL") & table["difference"].notna()]
    out = []
    for r in pooled.to_dict("records"):
        low, high = r.get("ci_low", math.nan), r.get("ci_high", math.nan)
        clear = excludes_zero(low, high)
        n_pairs = r.get("n_pairs", math.nan)
        pairs = f", {int(n_pairs)} same-seed pairs" if not math.isnan(n_pairs) else ""
        text = (
            f"{_prefix(run)}{r['config']} vs {r['baseline']}: rate {pct(r['rate_baseline'])} → "
            f"{pct(r['rate_config'])}, change {pp(r['difference'])} pp "
            f"[{pp(low)}, {pp(high)}]{pairs}, {p_text(r.get('mcnemar_p', math.nan))}"
        )
        out.append(
            Finding(
                "paired", text + ("" if clear else f": {NO_CHANGE}"), abs(r["difference"]), clear
            )
        )
    return sorted(out, key=lambda f: -f.size)


def _extreme(sub: pd.DataFrame, highest: bool) -> tuple[dict, int]:
    """The group with the highest (lowest) rate, ties broken by name, and how many tie."""
    rate = sub["rate"].max() if highest else sub["rate"].min()
    tied = sub[sub["rate"] == rate].sort_values("group")
    return tied.iloc[0].to_dict(), len(tied)


def _group(row: dict, ties: int) -> str:
    tie = f" (tied with {ties - 1} more)" if ties > 1 else ""
    return f"{row['group']}{tie} {pct(row['rate'])} [{pct(row['ci_low'])}, {pct(row['ci_high'])}]"


def spread_findings(
    rates: pd.DataFrame | None, run: str | None = None, baseline: str = "sd"
) -> list[Finding]:
    """Per config, the highest- and lowest-rate group with their Wilson intervals, and whether
    the intervals overlap; the baseline config first, then by the gap between the two."""
    if rates is None or rates.empty:
        return []
    where = f"{_prefix(run)}results/nudity_rates.csv"
    if (gap := _missing(rates, RATES_NEEDS, where)) is not None:
        return [gap]
    table = numeric(rates, ("rate", "ci_low", "ci_high", "n", "nude"), where)
    name = "country" if "country" in table else "iso3" if "iso3" in table else "config"
    table = table.assign(group=table[name].astype(str)).dropna(subset=["rate"])
    out = []
    for config, sub in table.groupby(table["config"].astype(str), sort=False):
        if sub["group"].nunique() < 2 or sub["rate"].max() == sub["rate"].min():
            continue  # one group, or every group equal: nothing to compare
        (top, n_top), (bottom, n_bottom) = _extreme(sub, True), _extreme(sub, False)
        clear = bottom["ci_high"] < top["ci_low"]
        verdict = "intervals do not overlap" if clear else NO_DIFFERENCE
        text = (
            f"{_prefix(run)}{config}: highest {_group(top, n_top)}, lowest "
            f"{_group(bottom, n_bottom)}; {verdict}"
        )
        size = top["rate"] - bottom["rate"]
        out.append(Finding("spread", text, math.inf if config == baseline else size, clear))
    return sorted(out, key=lambda f: -f.size)


def zero_finding(rates: pd.DataFrame | None, run: str | None = None) -> Finding | None:
    """One line for a run in which no image was flagged at all (every rate 0)."""
    if rates is None or rates.empty or not {"nude", "n"} <= set(rates.columns):
        return None
    where = f"{_prefix(run)}results/nudity_rates.csv"
    table = numeric(rates, ("n", "nude"), where)
    n, flagged = int(table["n"].sum()), int(table["nude"].sum())
    if n == 0 or flagged > 0:
        return None
    rule = f" by rule {rates['rule'].iloc[0]}" if "rule" in rates else ""
    return Finding(
        "zero",
        f"{_prefix(run)}Every rate is 0: none of {n} judged images was flagged{rule}, "
        "so there is no difference to report.",
    )


def guardrail_findings(table: pd.DataFrame | None, baseline: str = "sd") -> list[Finding]:
    """Each guardrail's change vs the baseline (probe and I2P parts), largest first."""
    if table is None or table.empty or "guardrail" not in table:
        return []
    cols = tuple(c for part in GUARDRAIL_PARTS.values() for c in part)
    table = numeric(table, cols, "guardrails.csv")
    out = []
    for r in table.to_dict("records"):
        parts, sizes, clear = [], [], False
        for label, (change, low, high, p) in GUARDRAIL_PARTS.items():
            value = r.get(change, math.nan)
            if math.isnan(value):
                continue
            lo, hi = r.get(low, math.nan), r.get(high, math.nan)
            part_clear = excludes_zero(lo, hi)
            test = f", {p_text(r.get(p, math.nan))}" if p and p in r else ""
            parts.append(
                f"{label} {pp(value)} pp [{pp(lo)}, {pp(hi)}]{test}"
                + ("" if part_clear else f", {NO_CHANGE}")
            )
            sizes.append(abs(value))
            clear = clear or part_clear
        if parts:
            text = f"guardrail {r['guardrail']} vs {baseline}: {'; '.join(parts)}"
            out.append(Finding("guardrail", text, max(sizes), clear))
    return sorted(out, key=lambda f: -f.size)


def _pick(groups: list[list[Finding]], room: int) -> tuple[list[Finding], int]:
    """Up to `room` lines: PER_KIND from each group in turn, then the rest in order."""
    chosen = [g[:PER_KIND] for g in groups]
    left = room - sum(len(c) for c in chosen)
    for i, g in enumerate(groups):
        extra = g[PER_KIND : PER_KIND + max(left, 0)]
        chosen[i] += extra
        left -= len(extra)
    flat = [f for c in chosen for f in c]
    total = sum(len(g) for g in groups)
    if len(flat) > room:  # more kinds than room: keep the first of each, in order
        flat = flat[:room]
    return flat, total - len(flat)


def _baseline(paired: pd.DataFrame | None, default: str) -> str:
    """The baseline the run's paired tests used (listed first among its spreads)."""
    if paired is None or "baseline" not in paired or paired["baseline"].dropna().empty:
        return default
    return str(paired["baseline"].dropna().iloc[0])


def key_findings(
    runs: list[RunTables], guardrails: pd.DataFrame | None = None, baseline: str = "sd"
) -> list[Finding]:
    """The section's lines: a provisional warning first, then the comparisons (at most
    MAX_LINES in all); a run with nothing flagged gives its one line instead of comparisons."""
    named = len(runs) > 1
    status: list[Finding] = []
    late = [r.name for r in runs if r.provisional]
    if late:
        status.append(
            Finding(
                "status",
                f"Provisional: {', '.join(late)} {'is' if len(late) == 1 else 'are'} not "
                "finished; these findings cover only what is done and may change.",
            )
        )
    zeros, paired, spreads = [], [], []
    for r in runs:
        label = r.name if named else None
        zero = zero_finding(r.rates, label)
        if zero is not None:
            zeros.append(zero)
            continue
        paired += paired_findings(r.paired, label)
        spreads += spread_findings(r.rates, label, _baseline(r.paired, baseline))
    gaps = [f for f in paired + spreads if f.kind == "status"]
    paired = sorted((f for f in paired if f.kind != "status"), key=lambda f: -f.size)
    spreads = sorted((f for f in spreads if f.kind != "status"), key=lambda f: -f.size)
    groups = [zeros, paired, spreads, guardrail_findings(guardrails, baseline)]
    room = MAX_LINES - len(status) - len(gaps)
    lines, left = _pick(groups, room)
    if left:
        lines, left = _pick(groups, room - 1)  # one line to say what is left out
        lines.append(
            Finding("status", f"{left} more comparison{'s' if left > 1 else ''}: see the tables.")
        )
    if not lines and not gaps:
        lines.append(Finding("status", "No results tables yet: nothing to summarise."))
    return status + gaps + lines
