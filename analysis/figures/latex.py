"""booktabs LaTeX tables from the result CSVs, ready to \\input{} into a paper.

Built by hand (no Styler/jinja dependency at paper time) so the layout is fixed: per-country
nudity rates with 95% Wilson intervals, and I2P Table 1 (rows = categories, two columns per
config: inappropriate probability and expected maximum +- std). Names are escaped, so a config
such as `sld_max` or a country `Trinidad & Tobago` cannot break the document.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.store.atomic import atomic_write_text

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape_latex(text: object) -> str:
    """`text` with LaTeX's special characters escaped (one pass, so escapes are not re-escaped)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def booktabs(
    header: list[str],
    rows: list[list[str]],
    align: str,
    caption: str = "",
    label: str = "",
    header_rows: list[str] | None = None,
) -> str:
    """A `table` float with \\toprule/\\midrule/\\bottomrule; cells are already LaTeX.

    `header_rows` are extra raw lines (e.g. \\multicolumn groups) put above `header`.
    """
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{caption}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    lines += header_rows or []
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return "--" if not math.isfinite(x) else f"{100 * x:.1f}"


def rates_table_tex(rates: pd.DataFrame, baseline: str | None = None) -> str:
    """Per-country nudity rate (%) and Wilson interval, one column per config, one row per
    country, sorted by the baseline's rate (highest first) as in the figure."""
    configs = [str(c) for c in dict.fromkeys(rates["config"])]
    base = baseline if baseline in configs else ("sd" if "sd" in configs else configs[0])
    configs = [base, *[c for c in configs if c != base]]
    rule = str(rates["rule"].iloc[0]) if "rule" in rates and len(rates) else ""
    first = rates[rates["config"].astype(str) == base]
    order = first.sort_values(["rate", "country"], ascending=[False, True])["country"].tolist()
    order += sorted(set(rates["country"]) - set(order))
    cells = rates.assign(config=rates["config"].astype(str)).set_index(["country", "config"])
    rows = []
    for country in order:
        row = [escape_latex(country)]
        ns = []
        for config in configs:
            if (country, config) not in cells.index:
                row.append("--")
                continue
            r = cells.loc[(country, config)]
            row.append(
                f"{_pct(float(r['rate']))} [{_pct(float(r['ci_low']))}, "
                f"{_pct(float(r['ci_high']))}]"
            )
            ns.append(str(int(r["n"])))
        row.append("/".join(dict.fromkeys(ns)) or "--")
        rows.append(row)
    header = ["Country", *[escape_latex(c) for c in configs], "$n$"]
    caption = (
        "Nudity rate (\\%) per country with 95\\% Wilson intervals"
        + (f" (rule: {escape_latex(rule)})" if rule else "")
        + "; $n$ = scored images per config."
    )
    return booktabs(header, rows, "l" + "r" * len(configs) + "r", caption, "tab:nudity-rates")


def i2p_table_tex(table: pd.DataFrame) -> str:
    """I2P Table 1: rows = categories, per config the inappropriate probability and the
    expected maximum inappropriateness +- std, as in the paper."""
    categories = list(dict.fromkeys(table["category"]))
    configs = [str(c) for c in dict.fromkeys(table["config"])]
    cells = table.assign(config=table["config"].astype(str)).set_index(["category", "config"])
    group = " & ".join(rf"\multicolumn{{2}}{{c}}{{{escape_latex(c)}}}" for c in configs)
    rules = " ".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(configs)))
    rows = []
    for category in categories:
        row = [escape_latex(category)]
        for config in configs:
            r = cells.loc[(category, config)] if (category, config) in cells.index else None
            if r is None or not math.isfinite(float(r["inappropriate_probability"])):
                row += ["--", "--"]  # no prompt of this category, or none with a verdict
                continue
            row.append(f"{float(r['inappropriate_probability']):.2f}")
            row.append(f"{float(r['exp_max_mean']):.2f} $\\pm$ {float(r['exp_max_std']):.2f}")
        rows.append(row)
    header = ["Category", *["Prob.", "Exp. max."] * len(configs)]
    caption = (
        "Probability of an inappropriate image and expected maximum inappropriateness "
        "($\\pm$ std) per I2P category."
    )
    return booktabs(
        header,
        rows,
        "l" + "rr" * len(configs),
        caption,
        "tab:i2p",
        header_rows=[f" & {group} \\\\", rules],
    )


def write_tex(text: str, path: str | Path) -> Path:
    """Write a .tex file atomically (a half-written table would break the paper's build)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path
