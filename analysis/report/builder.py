"""The audit write-up: what was measured, how, with which exact models and rules, with what result.

Reads only run directories (manifest, scores metadata, results, figures, images) and renders one
self-contained HTML file (images, figures, plotly.js and the world TopoJSON inlined: it opens
offline and loads nothing from anywhere) or Markdown with figure files beside it. Sample images
judged inappropriate are blurred unless blur=False, so readers are not exposed by accident.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader

from analysis.errors import AuditError
from analysis.figures.notice import manifest_notice
from analysis.report import markdown
from analysis.report.csp import policy, script_hashes
from analysis.report.findings import (
    PAIRED_NUMBERS,
    RATE_NUMBERS,
    RunTables,
    key_findings,
    numeric,
)
from analysis.report.markdown import md_link_target
from analysis.report.samples import read_all_scores
from analysis.report.samples import samples as sample_images
from analysis.report.tables import present
from analysis.store import RunDir, atomic_write_text
from analysis.store.csvsafe import read_back


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise AuditError(f"{path} is not a readable results table: {reason}") from None
    for col in table.columns:  # undo the formula-injection quote of `write_csv`
        if not pd.api.types.is_numeric_dtype(table[col]):
            table[col] = table[col].map(lambda v: read_back(v) if isinstance(v, str) else v)
    return table


def _numbers(path: Path, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """A results table whose numeric columns hold numbers (text in one: a named error)."""
    table = _read_csv(path)
    return None if table is None else numeric(table, columns, str(path))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AuditError(f"{path} is not valid JSON: {exc}") from None


def _figures(run: RunDir) -> list[dict[str, Any]]:
    figs = []
    for png in sorted(run.figures_dir.glob("*.png")) if run.figures_dir.is_dir() else []:
        figs.append(
            {
                "name": png.stem.replace("_", " "),
                "src": _data_uri(png.read_bytes(), "image/png"),
                "file": png,
            }
        )
    return figs


def _interactive_map(run: RunDir, key: str, notice: str | None) -> str | None:
    rates = _read_csv(run.results_dir / "nudity_rates.csv")
    if rates is None or rates.empty:
        return None
    from analysis.figures.export import figure_html
    from analysis.figures.maps import rate_map
    from analysis.figures.notice import stamp_plotly

    return figure_html(
        stamp_plotly(rate_map(rates, "Nudity rate per country (interactive)"), notice),
        div_id=f"map-{key}",
        full_html=False,
        include_plotlyjs=False,
    )


RATE_COLUMNS = [
    "country",
    "config",
    "rule",
    "nude",
    "n",
    "rate",
    "ci",
    "ratio_to_mean",
    "n_missing",
]
PAIRED_COLUMNS = [
    "country",
    "config",
    "n_pairs",
    "rate_baseline",
    "rate_config",
    "difference",
    "ci",
    "mcnemar_p",
    "p_holm",
    "p_bh",
]
CORR_COLUMNS = ["category", "target", "n", "spearman_rho", "ci", "p_value", "pearson_r"]


def _stages(items: pd.DataFrame | None, scores: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Completeness per stage: generated, and scored per classifier, out of the plan."""
    if items is None:
        return {"planned": 0, "generated": 0, "failed": 0, "pending": 0, "scored": {}}
    done = set(items.loc[items["status"] == "done", "item_id"])
    scored = {}
    for name, table in scores.items():
        ids = set(table["item_id"]) & done
        scored[name] = {"scored": len(ids), "missing": len(done - ids)}
    return {
        "planned": len(items),
        "generated": len(done),
        "failed": int((items["status"] == "error").sum()),
        "pending": int((~items["status"].isin(["done", "error"])).sum()),
        "scored": scored,
    }


def gather(
    run_path: Path, blur: bool = True, interactive: bool = True, key: str | None = None
) -> dict[str, Any]:
    """Everything the templates show about one run directory (`key`: unique in one report)."""
    run = RunDir(run_path)
    manifest = run.read_manifest()
    key = key or run.path.name
    spec = manifest.get("spec", {})
    classifiers = {}
    for meta in sorted(run.scores_dir.glob("*.json")) if run.scores_dir.is_dir() else []:
        classifiers[meta.stem] = _read_json(meta)
    try:
        items = run.items()
    except AuditError:
        items = None
    scores = read_all_scores(run)  # read once: completeness and sample blurring both use them
    stages = _stages(items, scores)
    summary = _read_json(run.results_dir / "summary.json")
    results = run.results_dir
    i2p_dir = run.path / "i2p"
    notice = manifest_notice(manifest, run.manifest_path)
    model = manifest.get("model") or {}
    figures = _figures(run)
    if i2p_dir.is_dir():
        figures += [
            {
                "name": p.stem.replace("_", " "),
                "src": _data_uri(p.read_bytes(), "image/png"),
                "file": p,
            }
            for p in sorted(i2p_dir.glob("*.png"))
        ]
    complete = stages["pending"] == 0 and all(c["missing"] == 0 for c in stages["scored"].values())
    rates = _numbers(results / "nudity_rates.csv", RATE_NUMBERS)
    paired = _numbers(results / "paired_tests.csv", PAIRED_NUMBERS)
    dataset = _read_csv(results / "dataset_nudity_rates.csv")
    i2p_table = _read_csv(i2p_dir / "i2p_table.csv") if i2p_dir.is_dir() else None
    if i2p_table is None:
        i2p_table = _read_csv(results / "i2p_table.csv")
    i2p_corr = _read_csv(i2p_dir / "toxicity_correlation.csv") if i2p_dir.is_dir() else None
    configs = spec.get("configs", [])
    audit = _read_json(run.path.parent.parent / "audit.json")  # a run of `t2i-audit run FILE`
    name = f"{run.path.parent.name}/{run.path.name}" if audit else run.path.name
    provisional = not complete or (summary is not None and summary.get("final") is False)
    return {
        "key": key,
        "name": name,
        "tables": RunTables(name, rates, paired, provisional),
        "audit": {
            "file": audit.get("spec_file"),
            "sha256": audit.get("spec_sha256"),
            "overrides": audit.get("overrides"),
        }
        if audit
        else None,
        "path": str(run.path),
        "tiny": spec.get("model") in ("tiny", "sd1-arch"),
        # a model that carries a notice (the toy model's planted rates) says it above everything
        "notice": notice,
        "spec": spec,
        "configs": configs,
        "has_sld": any(c.get("kind") == "sld" for c in configs),
        "has_negative": any(c.get("kind") == "negative" for c in configs),
        "n_items": manifest.get("n_items"),
        "warnings": manifest.get("warnings", []),
        "model": model,
        "scheduler": (model.get("scheduler") or {}).get("class"),
        "versions": manifest.get("versions", {}),
        "git": manifest.get("git", {}),
        "created": manifest.get("created"),
        "device": manifest.get("device"),
        "classifiers": classifiers,
        "stages": stages,
        "complete": complete,
        "results_final": bool(summary.get("final", False)) if summary else None,
        "summary": summary,
        "rates": present(rates, RATE_COLUMNS),
        "paired": present(paired, PAIRED_COLUMNS),
        "dataset": present(dataset),
        "i2p_table": present(i2p_table),
        "i2p_corr": present(i2p_corr, CORR_COLUMNS),
        "figures": figures,
        "map_html": _interactive_map(run, key, notice) if interactive else None,
        "samples": sample_images(run, blur, items, scores),
    }


def _keys(runs: list[Path]) -> list[str]:
    """A unique, id-safe key per run: its folder name, numbered when two runs share one."""
    names = [Path(r).resolve().name or "run" for r in runs]
    keys = []
    for i, name in enumerate(names):
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:40] or "run"
        keys.append(f"{safe}-{i + 1}" if names.count(name) > 1 else safe)
    return keys


def _guardrails(folder: Path | None) -> dict[str, Any] | None:
    """The guardrail comparison written by `t2i-audit guardrails --out FOLDER` (labelled)."""
    if folder is None:
        return None
    from analysis.guardrails.outputs import READABLE, readable_table

    table = _read_csv(Path(folder) / "guardrails.csv")
    if table is None:
        raise AuditError(f"{folder} has no guardrails.csv; run `t2i-audit guardrails` first")
    echo = _read_json(Path(folder) / "guardrails.json") or {}
    if not isinstance(echo, dict):
        raise AuditError(f"{folder}/guardrails.json is not a JSON object; re-run the guardrails")
    figure = Path(folder) / "paper_guardrails.png"
    missing = {"guardrail", "family"} - set(table.columns)
    if missing:
        raise AuditError(
            f"{folder}/guardrails.csv lacks the column(s) {', '.join(sorted(missing))}; "
            "re-run `t2i-audit guardrails`"
        )
    numbers = [c for _, cols, _ in READABLE for c in cols]
    numbers += ["probe_mcnemar_p", "probe_n_missing", "i2p_n_missing"]
    table = numeric(table, tuple(numbers), f"{folder}/guardrails.csv")
    return {
        "table": table,
        "rows": readable_table(table).to_dict("records"),
        "baseline": echo.get("baseline", "sd"),
        "conventions": echo.get("conventions", {}),
        "arms": echo.get("arms", []),
        "notes": echo.get("notes", []),
        "figure": {
            "name": "guardrails",
            "src": _data_uri(figure.read_bytes(), "image/png"),
            "file": figure,
        }
        if figure.is_file()
        else None,
    }


def _judges(folder: Path | None) -> dict[str, Any] | None:
    """The judge sensitivity written by `t2i-audit judges --out FOLDER`: readable conclusions,
    the agreement table, the figure and the conventions."""
    if folder is None:
        return None
    from analysis.judges.outputs import readable_conclusions

    folder = Path(folder)
    conclusions = _read_csv(folder / "conclusions.csv")
    agreement = _read_csv(folder / "agreement.csv")
    echo = _read_json(folder / "judges.json")
    if conclusions is None or agreement is None or not isinstance(echo, dict):
        raise AuditError(
            f"{folder} has no complete judges output (conclusions.csv, agreement.csv, "
            "judges.json); run `t2i-audit judges RUN... --out` first"
        )
    need = {"run", "config", "reference_rule", "reference_threshold", "change", "direction"}
    need |= {"significant", "holds_under_every_rule", "flips_under", "curve_flips"}
    need |= {"change_ci_low", "change_ci_high"}
    if missing := need - set(conclusions.columns):
        raise AuditError(
            f"{folder}/conclusions.csv lacks the column(s) {', '.join(sorted(missing))}; "
            "re-run `t2i-audit judges`"
        )
    conclusions = numeric(
        conclusions,
        ("reference_threshold", "change", "change_ci_low", "change_ci_high"),
        f"{folder}/conclusions.csv",
    )
    for col in ("significant", "holds_under_every_rule"):
        conclusions[col] = conclusions[col].astype(str).str.lower().eq("true")
    shown = ["judge_a", "judge_b", "n", "agreement", "kappa", "ci_low", "ci_high"]
    shown += ["n11", "n10", "n01", "n00"]
    agree = agreement.reindex(columns=[c for c in ["run", *shown] if c in agreement.columns])
    agree = (
        agree.assign(run=agree["run"].map(lambda r: Path(str(r)).name)) if "run" in agree else agree
    )
    for col in ("agreement", "kappa", "ci_low", "ci_high"):
        if col in agree:
            agree[col] = pd.to_numeric(agree[col], errors="coerce").map(
                lambda v: "–" if pd.isna(v) else f"{v:.2f}"
            )
    for col in ("n", "n11", "n10", "n01", "n00"):
        if col in agree:
            agree[col] = pd.to_numeric(agree[col], errors="coerce").astype("Int64")
    agree = agree.astype(object).where(agree.notna(), "")
    recipe = echo.get("recipe") or {}
    cuts = recipe.get("thresholds") or []
    listed = conclusions["rules"] if "rules" in conclusions else pd.Series(dtype=object)
    rules = list(dict.fromkeys(r for v in listed.dropna() for r in str(v).split(";")))
    figure = folder / "paper_judges.png"
    return {
        "rows": readable_conclusions(conclusions).to_dict("records"),
        "agreement": agree.to_dict("records"),
        "conventions": echo.get("conventions", {}),
        "depends": bool((~conclusions["holds_under_every_rule"]).any()),
        "rules": [r for r in rules if r],
        "thresholds": f"{min(cuts):g} to {max(cuts):g}, {len(cuts)} cuts" if cuts else "none",
        "figure": {
            "name": "judges",
            "src": _data_uri(figure.read_bytes(), "image/png"),
            "file": figure,
        }
        if figure.is_file()
        else None,
    }


def write_report(
    runs: list[Path],
    out: Path,
    fmt: str = "html",
    blur: bool = True,
    title: str | None = None,
    guardrails: Path | None = None,
    judges: Path | None = None,
) -> Path:
    """Render the write-up for one or more runs into `out` (HTML, or Markdown + figure files),
    with the guardrail comparison of `guardrails` (a `t2i-audit guardrails` folder) if given,
    and the section "Does the conclusion depend on the judge?" from `judges` (a `t2i-audit
    judges` folder) if given.

    Every value is autoescaped (prompts and titles are untrusted text): HTML-escaped in the
    HTML, which also carries a Content-Security-Policy that lets only our own inline scripts
    run; Markdown-escaped in the Markdown (`analysis.report.markdown`).
    """
    if fmt not in ("html", "md"):
        raise AuditError(f"--format must be html or md, not {fmt!r}")
    if not runs:
        raise AuditError("give at least one run directory")
    resolved = [Path(r).resolve() for r in runs]
    if len(set(resolved)) < len(resolved):
        raise AuditError("the same run directory is given twice")
    env = Environment(
        loader=PackageLoader("analysis.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    data = [
        gather(Path(r), blur=blur, interactive=fmt == "html", key=k)
        for r, k in zip(runs, _keys(runs), strict=True)
    ]
    plotlyjs = _plotlyjs() if fmt == "html" and any(d["map_html"] for d in data) else ""
    scripts = [f"<script>{plotlyjs}</script>" if plotlyjs else ""] + [
        d["map_html"] or "" for d in data
    ]
    guard = _guardrails(guardrails)
    judged = _judges(judges)
    context = {
        "title": title or f"Audit of {', '.join(d['name'] for d in data)}",
        "runs": data,
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "blur": blur,
        "plotlyjs": plotlyjs,
        "csp": policy(script_hashes(*scripts)),
        "guardrails": guard,
        "judges": judged,
        "findings": key_findings(
            [d["tables"] for d in data],
            guard["table"] if guard else None,
            guard["baseline"] if guard else "sd",
        ),
        "any": {
            key: any(d[key] for d in data)
            for key in ("rates", "paired", "dataset", "i2p_table", "i2p_corr", "has_sld")
        },
    }
    out = Path(out)
    files = out.with_name(out.stem + "_files")
    _check_out(out, files if fmt == "md" else None, resolved, guardrails, judges)
    if fmt == "md":
        try:
            files.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"--out {out}: cannot create {files}: {exc.strerror or exc}") from None
        for d in data:
            for fig in d["figures"]:
                target = files / f"{d['key']}-{Path(fig['file']).name}"
                shutil.copyfile(fig["file"], target)
                fig["md_path"] = md_link_target(f"{files.name}/{target.name}")
            for i, s in enumerate(d["samples"]):
                target = files / f"{d['key']}-sample-{i}.png"
                target.write_bytes(base64.b64decode(s["src"].split(",", 1)[1]))
                s["md_path"] = md_link_target(f"{files.name}/{target.name}")
        if context["guardrails"] and context["guardrails"]["figure"]:
            fig = context["guardrails"]["figure"]
            shutil.copyfile(fig["file"], files / "guardrails.png")
            fig["md_path"] = md_link_target(f"{files.name}/guardrails.png")
        if context["judges"] and context["judges"]["figure"]:
            fig = context["judges"]["figure"]
            shutil.copyfile(fig["file"], files / "judges.png")
            fig["md_path"] = md_link_target(f"{files.name}/judges.png")
        text = markdown.environment().get_template("report.md.j2").render(**context)
        atomic_write_text(out, text)
    else:
        atomic_write_text(out, env.get_template("report.html.j2").render(**context))
    return out


def _check_out(
    out: Path,
    files: Path | None,
    runs: list[Path],
    guardrails: Path | None,
    judges: Path | None = None,
) -> None:
    """The report and its figure folder must be new or our own: never a run's file or an input."""
    if out.is_dir():
        raise AuditError(f"--out {out} is a folder; give a file name such as report.html")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise AuditError(f"--out {out}: {parent} is a file, not a folder")
    if files is not None and files.exists() and not files.is_dir():
        raise AuditError(f"--out {out}: {files} (for the figure files) exists and is not a folder")
    target = out.resolve()
    inputs = [*runs, *([Path(guardrails).resolve()] if guardrails is not None else [])]
    inputs += [Path(judges).resolve()] if judges is not None else []
    for folder in inputs:  # an old report (.html/.md) may be replaced, a run's data never
        if target.exists() and target.is_relative_to(folder) and out.suffix not in (".html", ".md"):
            raise AuditError(
                f"--out {out} is an existing file of the input {folder}; write the report elsewhere"
            )


def _plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()
