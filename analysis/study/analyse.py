"""Unblind and summarise a pairwise user study: preference shares, their uncertainty, agreement.

Answers say left/right/none; the study's key turns them into "prefers config a", "prefers config
b" or "no preference". Raters who fail the attention checks are dropped before anything is
counted. Raters and pairs are crossed random factors, so the headline interval and p-value come
from a two-way cluster bootstrap (`analysis.study.crossed`); the per-answer Wilson intervals and
sign test are kept, labelled per answer. Every convention used (units, ties, the attention rule,
kappa's subjects) is returned with the numbers so the write-up can state it.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import AuditError
from analysis.stats.rates import wilson_interval
from analysis.store import atomic_write_text
from analysis.store.csvsafe import write_csv
from analysis.study.crossed import CONVENTION, N_BOOT, crossed_bootstrap
from analysis.study.files import AnswerRow, KeyRow, read_meta, read_table, validate_rows
from analysis.study.make import ATTENTION_RULE, KEY_COLUMNS, QUESTIONS

ANSWER_COLUMNS = ["rater", "pair_id", "question", "answer"]
CHOICES = ("a", "none", "b")


def read_key(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The key (pair id -> left/right config) and study.json beside it (empty dict if absent).

    Both are validated (`analysis.study.files`) and checked against each other: study.json's
    study_id is the hash of key.csv, and its pair names the two configs the key shows. A pair
    label that differs from the key would otherwise count every answer for one side.
    """
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"--key {path} does not exist; it is the key.csv written by `study make`")
    raw = read_table(path)
    missing = [c for c in KEY_COLUMNS if c not in raw.columns]
    if missing:
        raise AuditError(f"--key {path} is not a study key (no column {missing[0]!r})")
    key = validate_rows(raw, KeyRow, path)
    _check_key(key, path)
    meta_path = path.with_name("study.json")
    if not meta_path.is_file():
        return key, {}
    meta = read_meta(meta_path).model_dump()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    if digest != meta["study_id"]:
        raise AuditError(
            f"{meta_path}: study_id {meta['study_id']} does not match {path} (its hash is "
            f"{digest}): the key was edited or belongs to another study"
        )
    shown = _key_configs(key)
    a, b = meta["pair"]["a"], meta["pair"]["b"]
    if {a, b} != set(shown) or a == b:
        raise AuditError(
            f"{meta_path}: pair a={a!r}, b={b!r} does not match the configs in {path} "
            f"({', '.join(shown)})"
        )
    for kind, field in (("pair", "n_pairs"), ("attention", "n_attention_checks")):
        count = int((key["kind"] == kind).sum())
        if count != meta[field]:
            raise AuditError(f"{meta_path}: {field} is {meta[field]} but {path} has {count}")
    return key, meta


def _check_key(key: pd.DataFrame, path: Path) -> None:
    """Unique pair ids; a pair shows two configs, an attention check one image twice."""
    repeated = key.loc[key["pair_id"].duplicated(), "pair_id"]
    if len(repeated):
        raise AuditError(f"{path}: pair id {repeated.iloc[0]!r} appears twice")
    pairs = key[key["kind"] == "pair"]
    same = pairs[pairs["left_config"] == pairs["right_config"]]
    if len(same):
        raise AuditError(f"{path}: pair {same['pair_id'].iloc[0]!r} shows one config on both sides")
    checks = key[key["kind"] == "attention"]
    odd = checks[checks["left_image"] != checks["right_image"]]
    if len(odd):
        raise AuditError(
            f"{path}: attention check {odd['pair_id'].iloc[0]!r} shows two different images"
        )
    if not len(pairs):
        raise AuditError(f"{path} holds no pairs (kind 'pair')")


def _key_configs(key: pd.DataFrame) -> list[str]:
    pairs = key[key["kind"] == "pair"]
    return sorted(set(pairs["left_config"]) | set(pairs["right_config"]))


def read_answers(paths: list[Path]) -> tuple[pd.DataFrame, list[str]]:
    """All answer rows, exact duplicates dropped; a key.csv among the paths is skipped (noted).

    Rows are validated by `AnswerRow` (rater ids stripped). Rater ids that differ only in case
    ('Ann', 'ann') are refused: one person typing twice or two people, the files cannot say.
    """
    frames, skipped = [], []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise AuditError(f"answers file {path} does not exist")
        table = read_table(path)
        if "left_config" in table.columns:
            skipped.append(f"{path} (the study key, not answers)")
            continue
        missing = [c for c in ANSWER_COLUMNS if c not in table.columns]
        if missing:
            raise AuditError(
                f"{path} is not an answers file exported by the study page "
                f"(no column {missing[0]!r})"
            )
        table = validate_rows(table, AnswerRow, path)
        table["file"] = str(path)
        frames.append(table)
    if not frames:
        raise AuditError("no answers file given (the CSV files exported from the study page)")
    answers = pd.concat(frames, ignore_index=True)
    if answers.empty:
        raise AuditError(f"{', '.join(str(p) for p in paths)}: no answers in these files")
    ids = pd.Series(answers["rater"].unique())
    folded = ids.groupby(ids.str.casefold()).agg(list)
    clash_ids = folded[folded.map(len) > 1]
    if len(clash_ids):
        names = sorted(clash_ids.iloc[0])
        raise AuditError(
            f"rater ids {' and '.join(repr(n) for n in names)} differ only in case; rename one "
            "in its answers file (one rater or two cannot be told apart)"
        )
    answers = answers.drop_duplicates([c for c in answers.columns if c != "file"])
    clash = answers[answers.duplicated(["rater", "pair_id", "question"], keep=False)]
    if len(clash):
        row = clash.iloc[0]
        raise AuditError(
            f"rater {row['rater']!r} gave two different answers to {row['pair_id']} "
            f"({row['question']}) across {', '.join(sorted(set(clash['file'])))}; "
            "pass only that rater's latest export"
        )
    return answers.reset_index(drop=True), skipped


def unblind(answers: pd.DataFrame, key: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """Add kind and choice (a / none / b) to every answer, checking it belongs to this study."""
    if "study" in answers.columns and meta.get("study_id"):
        other = answers.loc[answers["study"].notna() & (answers["study"] != meta["study_id"])]
        if len(other):
            raise AuditError(
                f"{other['file'].iloc[0]} answers study {other['study'].iloc[0]!r}, "
                f"but the key is for study {meta['study_id']!r}"
            )
    unknown = answers.loc[~answers["pair_id"].isin(key["pair_id"])]
    if len(unknown):
        raise AuditError(
            f"{unknown['file'].iloc[0]}: pair id {unknown['pair_id'].iloc[0]!r} is not in the key"
        )
    a, b = study_pair(key, meta)
    merged = answers.merge(
        key[["pair_id", "kind", "left_config", "right_config"]], on="pair_id", how="left"
    )
    chosen = np.where(
        merged["answer"] == "left",
        merged["left_config"],
        np.where(merged["answer"] == "right", merged["right_config"], ""),
    )
    choice = pd.Series(chosen, index=merged.index).map({"": "none", a: "a", b: "b"})
    if choice.isna().any():  # read_key checked the configs: this is a bug, not bad input
        raise AssertionError(f"answer for a config outside {a}:{b}")
    merged["choice"] = choice
    return merged


def study_pair(key: pd.DataFrame, meta: dict[str, Any]) -> tuple[str, str]:
    """(a, b) as given to `study make --pair a:b`; sorted names if study.json is missing."""
    if meta.get("pair"):
        return meta["pair"]["a"], meta["pair"]["b"]
    names = _key_configs(key)
    if len(names) != 2:
        raise AuditError(f"the key names {len(names)} configs; a study compares exactly two")
    return names[0], names[1]


def attention(scored: pd.DataFrame, key: pd.DataFrame, max_failures: int) -> pd.DataFrame:
    """Per rater: answers given, attention answers wrong or missing, and whether the rater is kept.

    Every attention check has one correct answer per question, "none"; a missing answer counts as
    a failure too (the rater's attention cannot be shown). A rater fails with more than
    max_failures such failures.
    """
    checks = key.loc[key["kind"] == "attention", "pair_id"].tolist()
    expected = len(checks) * len(QUESTIONS)
    rows = []
    for rater, sub in scored.groupby("rater", sort=True):
        att = sub[sub["kind"] == "attention"]
        wrong = int((att["answer"] != "none").sum())
        missing = expected - len(att)
        rows.append(
            {
                "rater": rater,
                "n_answers": int((sub["kind"] == "pair").sum()),
                "attention_expected": expected,
                "attention_wrong": wrong,
                "attention_missing": missing,
                "failed": wrong + missing > max_failures,
            }
        )
    raters = pd.DataFrame(rows)
    raters["kept"] = ~raters["failed"]
    return raters


def fleiss(choices: pd.DataFrame) -> tuple[float, int, int]:
    """Fleiss' kappa over the pairs every rater answered: (kappa, n_pairs, n_raters)."""
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    wide = choices.pivot(index="pair_id", columns="rater", values="choice").dropna()
    n_subjects, n_raters = wide.shape
    if n_raters < 2 or n_subjects == 0:
        return float("nan"), int(n_subjects), int(n_raters)
    codes = wide.apply(lambda col: col.map({c: i for i, c in enumerate(CHOICES)})).to_numpy()
    table, _ = aggregate_raters(codes, n_cat=len(CHOICES))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = float(fleiss_kappa(table, method="fleiss"))
    return (kappa if math.isfinite(kappa) else float("nan")), int(n_subjects), int(n_raters)


def _share(k: int, n: int) -> dict[str, float]:
    low, high = wilson_interval(k, n)
    return {"share": k / n if n else float("nan"), "low": low, "high": high}


def _matrices(sub: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """raters x pairs matrices: answer prefers a (0/1), answer is decisive (0/1)."""
    prefer_a = pd.crosstab(sub["rater"], sub["pair_id"], values=sub["choice"] == "a", aggfunc="sum")
    decisive = pd.crosstab(sub["rater"], sub["pair_id"], values=sub["choice"] != "none",
                           aggfunc="sum")  # fmt: skip
    return prefer_a.fillna(0).to_numpy(float), decisive.fillna(0).to_numpy(float)


def preference_table(
    scored: pd.DataFrame, a: str, b: str, n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """Per question: counts; share of a among decisive answers with its two-way (raters x pairs)
    bootstrap interval and p; per-answer Wilson intervals and sign test; Fleiss' kappa."""
    from scipy.stats import binomtest

    rows = []
    pairs = scored[scored["kind"] == "pair"]
    for question in QUESTIONS:
        sub = pairs[pairs["question"] == question]
        counts = {c: int((sub["choice"] == c).sum()) for c in CHOICES}
        n = len(sub)
        decisive = counts["a"] + counts["b"]
        p = binomtest(counts["a"], decisive, 0.5).pvalue if decisive else float("nan")
        kappa, k_pairs, k_raters = fleiss(sub[["pair_id", "rater", "choice"]])
        row: dict[str, Any] = {
            "question": question,
            "config_a": a,
            "config_b": b,
            "n_raters": int(sub["rater"].nunique()),
            "n_answers": n,
            "n_a": counts["a"],
            "n_b": counts["b"],
            "n_none": counts["none"],
        }
        for name, k, total in (
            ("a", counts["a"], n),
            ("b", counts["b"], n),
            ("none", counts["none"], n),
            ("a_decisive", counts["a"], decisive),
        ):
            s = _share(k, total)
            row |= {f"share_{name}": s["share"], f"{name}_low": s["low"], f"{name}_high": s["high"]}
        boot = (
            crossed_bootstrap(*_matrices(sub), n_boot=n_boot, seed=seed)
            if n
            else {"low": float("nan"), "high": float("nan"), "p": float("nan"), "n_items": 0}
        )
        row |= {
            "n_decisive": decisive,
            "n_pairs": int(boot["n_items"]),
            "a_decisive_cluster_low": boot["low"],
            "a_decisive_cluster_high": boot["high"],
            "cluster_p": boot["p"],
            "sign_test_p_per_answer": float(p),
            "fleiss_kappa": kappa,
            "kappa_pairs": k_pairs,
            "kappa_raters": k_raters,
        }
        rows.append(row)
    return pd.DataFrame(rows)


def conventions(
    a: str, b: str, max_failures: int, n_checks: int, n_boot: int = N_BOOT, seed: int = 0
) -> list[str]:
    """Every choice the numbers depend on, in words, for the console and analysis.json."""
    return [
        f"a = {a}, b = {b}; answers left/right are unblinded with key.csv",
        "unit: one answer of one kept rater to one non-attention pair; raters and pairs are "
        "crossed (every rater sees the same pairs), so answers are not independent",
        "share_a_decisive: share of a among answers with a preference; its interval "
        "(a_decisive_cluster_low/high) and cluster_p: "
        + CONVENTION.format(n_boot=n_boot, seed=seed),
        "per answer (treats every answer as independent, too narrow when raters or pairs "
        "differ): shares of all answers to the question (no preference included) with 95% "
        "Wilson intervals (share_*, *_low, *_high), and sign_test_p_per_answer, a two-sided "
        "exact binomial test (scipy.stats.binomtest, p = 0.5) of a vs b preferences; ties (no "
        "preference) are excluded",
        "rater ids: surrounding spaces are stripped; ids that differ only in case are refused",
        f"attention checks ({n_checks} in this study): {ATTENTION_RULE}; a missing answer "
        f"counts as a failure; a rater with more than {max_failures} failure(s) is dropped",
        "agreement: Fleiss' kappa (statsmodels, method 'fleiss') over categories a / none / b, "
        "on the non-attention pairs answered by every kept rater; nan with fewer than 2 raters",
        "exact duplicate rows (the same export given twice) are counted once",
    ]


def analyse_study(
    paths: list[Path],
    key_path: Path | None = None,
    out: Path | None = None,
    max_attention_failures: int = 0,
) -> dict[str, Any]:
    """Read answers + key, drop inattentive raters, write out/preferences.csv, raters.csv,
    analysis.json (out defaults to results/ beside the key); return the tables and conventions."""
    if max_attention_failures < 0:
        raise AuditError(
            f"--max-attention-failures must be 0 or more, got {max_attention_failures}"
        )
    if key_path is None:
        if not paths:
            raise AuditError("no answers file given (the CSV files exported from the study page)")
        key_path = Path(paths[0]).parent / "key.csv"
        if not key_path.is_file():
            raise AuditError(f"no key.csv beside {paths[0]}; give the study's key with --key")
    key, meta = read_key(key_path)
    answers, skipped = read_answers(paths)
    a, b = study_pair(key, meta)
    scored = unblind(answers, key, meta)
    raters = attention(scored, key, max_attention_failures)
    kept = scored[scored["rater"].isin(raters.loc[raters["kept"], "rater"])]
    table = preference_table(kept, a, b)
    n_checks = int((key["kind"] == "attention").sum())
    notes = conventions(a, b, max_attention_failures, n_checks)
    out = Path(out) if out is not None else Path(key_path).parent / "results"
    result = {
        "study_id": meta.get("study_id"),
        "pair": {"a": a, "b": b},
        "inputs": {str(p): _sha256(Path(p)) for p in [key_path, *paths]},
        "skipped": skipped,
        "conventions": notes,
        "raters": raters.to_dict(orient="records"),
        "preferences": table.to_dict(orient="records"),
    }
    write_csv(table, out / "preferences.csv")
    write_csv(raters, out / "raters.csv")
    text = json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n"
    atomic_write_text(out / "analysis.json", text)
    return {**result, "table": table, "raters_table": raters, "out": out}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _jsonable(obj: Any) -> Any:
    """NaN becomes null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
