"""Write the judge sensitivity and agreement: CSVs, judges.json with the conventions, a figure.

Files: sensitivity.csv (every rate and change under every rule at its own cut), curve.csv (the
same along each rule's threshold curve), conclusions.csv (one row per run and config: does the
conclusion hold under every judge, and where does it flip), agreement.csv (Cohen's kappa per
judge pair, Fleiss' across all) and judges.json (the recipe, conventions and a summary). The
paper figure paper_judges.{pdf,svg,png} shows rate and change against threshold per config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.store import atomic_write_text
from analysis.store.csvsafe import write_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FILES = ("sensitivity.csv", "curve.csv", "conclusions.csv", "agreement.csv", "judges.json")
FIGURE = "paper_judges"
CONVENTIONS = {
    "probe": "per country: nudity_rates / paired_tests (Wilson; exact McNemar, Agresti-Min "
    "interval; Holm/BH over the testable countries of a config); overall: every country "
    "pooled, Holm/BH over the testable configs of the run",
    "i2p": "Q16 OR the NudeNet rule; per category: clustered McNemar (Durkalski) with a "
    "cluster-robust interval, clusters = prompt texts; Holm/BH over the testable categories "
    "of a config; 'ALL' over the configs",
    "conclusion": "direction of the overall change vs the baseline (lower/same/higher) and "
    "whether Holm p < 0.05, under the reference rule (the run's own) at its own cut",
    "holds_under_every_rule": "the same direction and significance under every rule at its own cut",
    "curve_flips": "per rule, the lowest threshold of its curve whose conclusion differs from "
    "the reference ('rule@cut'); a rule not listed never differs",
    "ranking_stable": "configs ordered by overall change (most lowering first) identically "
    "under every rule at its own cut",
    "guardrails": "part 'guardrails': the guardrail table's probe arms (every config of every "
    "run, <config>+filter counting only the images the filter passes, <config>+text-filter; "
    "guardrails.table.guardrail_table under each judge), each against the baseline of the first "
    "run on the same (prompt_id, seed, image_index); unit ALL; Holm/BH over the testable arms; "
    "ranking over all arms. From --guardrails DIR, or when the runs are probe runs of more than "
    "one model. I2P arms are left out (their cluster bootstrap is 10,000 draws per arm and cut): "
    "the I2P runs' own per-category changes are in part 'i2p'",
    "agreement": "pairs of judges on the images both scored (missing verdicts left out): "
    "Cohen's kappa with statsmodels' asymptotic 95% interval; Fleiss' kappa across all judges "
    "on the images every judge scored",
}


def write_judges(result: dict[str, Any], out: Path, recipe: dict[str, Any]) -> list[Path]:
    """The five files and the figure into `out` (created); returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, conclusions, agreement = result["rows"], result["conclusions"], result["agreement"]
    own = rows[rows["own_cut"]]
    curve = rows[rows["threshold"].isin(recipe["thresholds"])]
    tables = {"sensitivity.csv": own, "curve.csv": curve}
    tables |= {"conclusions.csv": conclusions, "agreement.csv": agreement}
    written = []
    for name, table in tables.items():
        write_csv(table, out / name)
        written.append(out / name)
    summary = {
        "recipe": recipe,
        "conventions": CONVENTIONS,
        "references": result["references"],
        "guardrail_arms": result.get("guardrail_arms", []),
        "conclusions": json.loads(conclusions.to_json(orient="records")),
        "depends_on_judge": bool((~conclusions["holds_under_every_rule"].astype(bool)).any())
        if len(conclusions)
        else False,
    }
    atomic_write_text(out / "judges.json", json.dumps(summary, indent=2, default=str) + "\n")
    written.append(out / "judges.json")
    from analysis.figures.notice import run_notice, stamp_matplotlib
    from analysis.figures.static import save_static

    notices = sorted({n for r in recipe["runs"] if (n := run_notice(r))})
    figure = stamp_matplotlib(judges_figure(curve), "; ".join(notices) or None)
    written += save_static(figure, out / FIGURE)
    return written


def judges_figure(curve: pd.DataFrame) -> Figure:
    """Top: each config's overall rate against the threshold, one panel per rule; bottom: its
    change against the baseline with the 95% interval as a band. One line per config."""
    import matplotlib as mpl
    from matplotlib.ticker import PercentFormatter

    from analysis.figures.static import COLUMN_WIDTH, PAPER_RC, new_figure, palette
    from analysis.judges.sensitivity import OVERALL

    overall = curve[curve["unit"] == OVERALL].copy()
    many_runs = overall["run"].nunique() > 1
    overall["line"] = (
        overall["run"].map(lambda r: Path(r).name) + ":" + overall["config"]
        if many_runs
        else overall["config"]
    )
    from analysis.judges.sensitivity import GUARDRAILS

    arm = overall["part"] == GUARDRAILS
    if arm.any():  # the arms hold every probe config (and the filters): one line each
        overall = overall[overall["part"] != "probe"]
        arm = overall["part"] == GUARDRAILS
        overall.loc[arm, "line"] = overall.loc[arm, "config"].astype(str)
    rules = list(dict.fromkeys(overall["rule"])) or ["(none)"]
    lines = list(dict.fromkeys(overall["line"]))
    colours = dict(zip(lines, palette(len(lines)), strict=True))
    # the legend sits below the panels (guardrail arms add many lines)
    fig = new_figure(max(COLUMN_WIDTH, 1.7 * len(rules)), 3.2 + 0.14 * len(lines))
    with mpl.rc_context(PAPER_RC):
        axes = fig.subplots(2, len(rules), squeeze=False, sharex=True)
        for j, rule in enumerate(rules):
            sub = overall[overall["rule"] == rule]
            top, bottom = axes[0][j], axes[1][j]
            for line, g in sub.groupby("line", sort=False):
                g = g.sort_values("threshold")
                c = colours[line]
                top.plot(g["threshold"], g["rate"], color=c, label=line, gid=f"rate-{rule}-{line}")
                if g["change"].notna().any():
                    bottom.plot(g["threshold"], g["change"], color=c, gid=f"change-{rule}-{line}")
                    bottom.fill_between(
                        g["threshold"].to_numpy(float),
                        g["change_ci_low"].to_numpy(float),
                        g["change_ci_high"].to_numpy(float),
                        color=c,
                        alpha=0.15,
                        lw=0,
                    )
            bottom.axhline(0, color="0.5", lw=0.6, ls=":")
            top.set_title(rule)
            top.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            bottom.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            bottom.set_xlabel("threshold")
            if j == 0:
                top.set_ylabel("flagged rate")
                bottom.set_ylabel("change vs baseline")
        if lines:
            legend = {}  # every line once, whichever panel drew it
            for ax in axes[0]:
                legend |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
            handles = list(legend.values())
            wide = max(map(len, legend)) > 22  # a long arm name: one column, or it is cut
            fig.legend(
                handles,
                list(legend),
                loc="outside lower center",
                ncols=1 + (not wide),
                frameon=False,
            )
    return fig


def readable_conclusions(conclusions: pd.DataFrame) -> pd.DataFrame:
    """The conclusions as a reader wants them: one sentence-like row per config."""

    def pct(v: Any) -> str:
        return "–" if v is None or pd.isna(v) else f"{100 * float(v):+.1f} pp"

    out = pd.DataFrame(
        {
            "Run": conclusions["run"].map(lambda r: Path(str(r)).name)
            + np.where(conclusions.get("part", "") == "guardrails", " (guardrail arm)", ""),
            "Config": conclusions["config"],
            "Reference judge": conclusions["reference_rule"].astype(str)
            + " @ "
            + conclusions["reference_threshold"].map(lambda t: f"{float(t):g}"),
            "Change vs baseline": [
                f"{pct(c)} [{pct(lo)}, {pct(hi)}]"
                for c, lo, hi in zip(
                    conclusions["change"],
                    conclusions["change_ci_low"],
                    conclusions["change_ci_high"],
                    strict=True,
                )
            ],
            "Conclusion": conclusions["direction"].astype(str)
            + np.where(conclusions["significant"].astype(bool), " (significant)", ""),
            "Holds under every rule": np.where(
                conclusions["holds_under_every_rule"].astype(bool), "yes", "no"
            ),
            "Flips under": conclusions["flips_under"].fillna("").replace("", "–"),
            "First flip on the curve": conclusions["curve_flips"].fillna("").replace("", "–"),
        }
    )
    return out


def read_guardrails_folder(folder: Path) -> tuple[list[Path], tuple[str, ...], dict[str, str]]:
    """The runs, blocked terms and model labels a `guardrails --out DIR` table was built from
    (its guardrails.json), so the same arms are rebuilt."""
    from analysis.errors import AuditError

    folder = Path(folder)
    meta, table = folder / "guardrails.json", folder / "guardrails.csv"
    if not meta.is_file() or not table.is_file():
        raise AuditError(
            f"--guardrails {folder} holds no guardrail table (guardrails.json and guardrails.csv); "
            f"write one with `t2i-audit guardrails RUN... --out {folder}`"
        )
    try:
        echo = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AuditError(f"--guardrails {meta} is unreadable ({exc})") from None
    runs = echo.get("runs") if isinstance(echo, dict) else None
    if not isinstance(runs, list) or not runs or not all(isinstance(r, str) for r in runs):
        raise AuditError(
            f"--guardrails {meta} lists no runs (an older t2i-audit wrote it); re-run "
            f"`t2i-audit guardrails RUN... --out {folder}`"
        )
    terms = tuple(str(t) for t in echo.get("text_terms") or ())
    labels = {str(k): str(v) for k, v in (echo.get("labels") or {}).items()}
    return [Path(r) for r in runs], terms, labels


def guardrail_arms(
    runs: list[Path], terms: tuple[str, ...] = (), labels: dict[str, str] | None = None
) -> list:
    """The probe arms of the guardrail table of `runs`, as `guardrails RUN...` builds them."""
    from analysis.guardrails.arms import arms_of

    return arms_of(runs, part="probe", text_terms=terms, labels=labels)


def _several_models(runs: list[Path]) -> bool:
    """Probe runs of more than one model, each model once: `guardrails RUN...`'s input."""
    from analysis.guardrails.arms import model_label, run_part

    labels = [model_label(r)[0] for r in runs if run_part(r) == "probe"]
    return len(labels) > 1 and len(set(labels)) == len(labels)


def analyse_judges(
    runs: list[Path],
    out: Path,
    rules: list[str] | None = None,
    thresholds: str = "",
    baseline: str = "sd",
    guardrails: Path | None = None,
) -> dict[str, Any]:
    """`t2i-audit judges`: check every input, then re-derive and write (skipped when OUT holds
    the same recipe's complete output: same runs, scores, rules, cuts and baseline).

    `guardrails`: a `guardrails --out` folder whose runs and arms are judged (instead of RUN...);
    probe runs of several models get their guardrail arms too."""
    from analysis.errors import AuditError
    from analysis.guardrails.arms import describe
    from analysis.judges.agreement import agreement
    from analysis.judges.sensitivity import DEFAULT_THRESHOLDS, parse_thresholds, sensitivity
    from analysis.store.ownership import check_output, is_run

    runs = [Path(r) for r in runs or []]
    if runs and guardrails is not None:
        raise AuditError("give run folders or --guardrails DIR (whose runs are judged), not both")
    terms: tuple[str, ...] = ()
    labels: dict[str, str] = {}
    if guardrails is not None:
        runs, terms, labels = read_guardrails_folder(guardrails)
    if not runs:
        raise AuditError("give at least one probe or I2P run folder (or --guardrails DIR)")
    if len({r.resolve() for r in runs}) < len(runs):
        raise AuditError("the same run folder is given twice")
    cuts = parse_thresholds(thresholds or DEFAULT_THRESHOLDS)
    check_output(out, inputs=[*runs, *([Path(guardrails)] if guardrails else [])], folder=True)
    for run in runs:
        if not Path(run).is_dir() or not is_run(Path(run)):
            raise AuditError(f"{run} is not a t2i-audit run folder")
    arms = []
    if guardrails is not None or _several_models(runs):
        arms = guardrail_arms(runs, terms, labels)
    recipe = {
        "runs": [str(r) for r in runs],
        "rules": list(rules or []),
        "thresholds": cuts,
        "baseline": baseline,
        "scores": {str(r): _fingerprint(r) for r in runs},
    }
    if arms:  # absent otherwise, so an earlier output without arms stays up to date
        recipe["guardrail_arms"] = [describe(a) for a in arms]
    old = _read_recipe(Path(out))
    if old == json.loads(json.dumps(recipe)) and all((Path(out) / f).is_file() for f in FILES):
        return {"skipped": True, "out": Path(out), "files": [Path(out) / f for f in FILES]}
    result = sensitivity(runs, rules, cuts, baseline, arms)
    result["guardrail_arms"] = [describe(a) for a in arms]
    per_run = {}
    for run in runs:
        used = result["rows"][result["rows"]["run"] == str(run)]["rule"]
        per_run[str(run)] = list(dict.fromkeys(used))
    result["agreement"] = agreement(runs, per_run)
    files = write_judges(result, Path(out), recipe)
    return {**result, "skipped": False, "out": Path(out), "files": files}


def _fingerprint(run: Path) -> dict[str, list]:
    """Size and mtime of each stored score table / part: a re-classified run is re-judged."""
    found = {}
    for folder in ("scores", "parts"):
        for path in sorted((Path(run) / folder).rglob("*")):
            if path.is_file():
                st = path.stat()
                found[str(path.relative_to(run))] = [st.st_size, st.st_mtime_ns]
    return found


def _read_recipe(out: Path) -> dict | None:
    try:
        return json.loads((out / "judges.json").read_text(encoding="utf-8")).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None
