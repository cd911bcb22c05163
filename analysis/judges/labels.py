"""Score each judge against the human labels of a stratified sample (`judges score`).

The human label of an image is the majority of its raters' yes/no answers ("unsure" decides
nothing and is counted; a tie is counted and left out). Because disagreement strata were
over-sampled, a judge's true/false positives are *weighted* counts: each labelled image stands for
w_h = N_h / m_h images of its stratum (N_h the stratum's size in the run, m_h its images with a
human label, which is n_h = n_drawn when every drawn image got one). Precision, recall and F1 are
ratios of those weighted totals; their intervals come from a stratified bootstrap (images resampled
with replacement within each stratum, weights fixed), so they carry the design's uncertainty.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from analysis.errors import AuditError
from analysis.judges.sample import KEY_COLUMNS, LABELS, VERDICT
from analysis.store import atomic_write_text
from analysis.store.csvsafe import write_csv
from analysis.store.ownership import check_output
from analysis.study.files import read_table, validate_rows

N_BOOT = 2000
LABEL_COLUMNS = ["sample", "sample_id", "label", "rater"]
Text = Annotated[str, Field(min_length=1)]


class SampleMeta(BaseModel):
    """sample.json as `judges sample` writes it (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    sample: Annotated[str, Field(pattern=r"^[0-9a-f]{12}$")]
    run: str
    run_spec_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    seed: Annotated[int, Field(ge=0)]
    n: Annotated[int, Field(ge=1)]
    population: Annotated[int, Field(ge=1)]
    left_out: dict[str, int]
    judges: Annotated[list[Text], Field(min_length=1)]
    strata: dict[str, dict[str, int]]
    question: Text
    labels: list[str]
    max_side: int
    conventions: list[str]
    html_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    created: str


class LabelRow(BaseModel):
    """One row of a labels file exported by the labelling page."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    sample: Text
    sample_id: Text
    label: Literal["yes", "no", "unsure"]
    rater: Text

    @field_validator("rater")
    @classmethod
    def _normal(cls, value: str) -> str:
        if any(unicodedata.category(c).startswith("C") for c in value):
            raise ValueError("contains control characters")
        return unicodedata.normalize("NFC", value)


def read_sample(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """sample.csv and sample.json of a sample folder, checked against each other.

    The sample id in sample.json is the hash of sample.csv: an edited key (a changed weight or
    verdict) would silently change every estimate, so it is refused.
    """
    folder = Path(folder)
    key_path, meta_path = folder / "sample.csv", folder / "sample.json"
    for path in (key_path, meta_path):
        if not path.is_file():
            raise AuditError(f"{folder} is not a sample folder (no {path.name}); `judges sample`")
    try:
        meta = SampleMeta.model_validate_json(meta_path.read_bytes()).model_dump()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "the file"
        raise AuditError(f"{meta_path}: {where}: {error['msg'].lower()}") from None
    digest = hashlib.sha256(key_path.read_bytes()).hexdigest()[:12]
    if digest != meta["sample"]:
        raise AuditError(
            f"{meta_path}: sample {meta['sample']} does not match {key_path} (its hash is "
            f"{digest}): the key was edited or belongs to another sample"
        )
    key = read_table(key_path)
    verdicts = [VERDICT + j for j in meta["judges"]]
    missing = [c for c in KEY_COLUMNS + verdicts if c not in key.columns]
    if missing:
        raise AuditError(f"{key_path} is not a sample key (no column {missing[0]!r})")
    for col in ("stratum_size", "n_drawn"):
        key[col] = key[col].astype(int)
    key["weight"] = key["weight"].astype(float)
    for col in verdicts:
        key[col] = key[col].map({"True": True, "False": False}).astype(bool)
    return key, meta


def read_labels(paths: list[Path], key: pd.DataFrame, sample: str) -> pd.DataFrame:
    """All label rows of these files (sample_id, label, rater), exact repeats counted once.

    A file answering another sample, an id not in this sample's key, a label outside yes/no/
    unsure, a file with no labels, or one rater giving two labels to one image: one error line.
    """
    known = set(key["sample_id"])
    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise AuditError(f"labels file {path} does not exist")
        table = read_table(path)
        missing = [c for c in LABEL_COLUMNS if c not in table.columns]
        if missing:
            raise AuditError(
                f"{path} is not a labels file exported by the labelling page "
                f"(no column {missing[0]!r})"
            )
        if table.empty:
            raise AuditError(f"{path} holds no labels")
        table = validate_rows(table, LabelRow, path)
        other = table.loc[table["sample"] != sample, "sample"]
        if len(other):
            raise AuditError(
                f"{path} labels sample {other.iloc[0]!r}, not this sample {sample!r}: it belongs "
                "to another sample's page"
            )
        unknown = table.loc[~table["sample_id"].isin(known), "sample_id"]
        if len(unknown):
            raise AuditError(f"{path}: sample id {unknown.iloc[0]!r} is not in this sample's key")
        frames.append(table)
    labels = pd.concat(frames, ignore_index=True).drop_duplicates()
    twice = labels[labels.duplicated(["sample_id", "rater"], keep=False)]
    if len(twice):
        row = twice.iloc[0]
        raise AuditError(
            f"rater {row['rater']!r} gave two different labels to {row['sample_id']!r} across "
            "the labels files; keep one export per rater"
        )
    return labels[["sample_id", "label", "rater"]].reset_index(drop=True)


def consensus(labels: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """Per sample id: n_yes, n_no, n_unsure and `human` (True/False by majority of yes/no,
    NA when unlabelled, only unsure, or tied)."""
    counts = pd.crosstab(labels["sample_id"], labels["label"]).reindex(
        index=ids, columns=list(LABELS), fill_value=0
    )
    counts.columns = [f"n_{c}" for c in counts.columns]
    human = pd.array([pd.NA] * len(counts), dtype="boolean")
    human[(counts["n_yes"] > counts["n_no"]).to_numpy()] = True
    human[(counts["n_no"] > counts["n_yes"]).to_numpy()] = False
    counts["human"] = human
    return counts.reset_index().rename(columns={"index": "sample_id"})


def _ratios(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1}


def weighted_counts(judge: np.ndarray, human: np.ndarray, weight: np.ndarray) -> dict[str, float]:
    """Weighted TP, FP, FN, TN: the sum of w over images in each cell."""
    return {
        "tp": float(weight[judge & human].sum()),
        "fp": float(weight[judge & ~human].sum()),
        "fn": float(weight[~judge & human].sum()),
        "tn": float(weight[~judge & ~human].sum()),
    }


def stratified_bootstrap(
    judge: np.ndarray,
    human: np.ndarray,
    weight: np.ndarray,
    strata: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Precision, recall, F1 over n_boot draws, each image resampled within its stratum."""
    tp = np.zeros(n_boot)
    fp = np.zeros(n_boot)
    fn = np.zeros(n_boot)
    for stratum in np.unique(strata):
        idx = np.flatnonzero(strata == stratum)
        draw = idx[rng.integers(0, idx.size, size=(n_boot, idx.size))]
        j, h, w = judge[draw], human[draw], weight[draw]
        tp += (w * (j & h)).sum(axis=1)
        fp += (w * (j & ~h)).sum(axis=1)
        fn += (w * (~j & h)).sum(axis=1)
    return _ratios(tp, fp, fn)


def _interval(draws: np.ndarray) -> tuple[float, float]:
    finite = draws[np.isfinite(draws)]
    if not finite.size:
        return math.nan, math.nan
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def judge_quality(
    key: pd.DataFrame,
    judges: list[str],
    human: pd.DataFrame,
    seed: int = 0,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """One row per judge: weighted and raw counts, precision, recall, F1 with 95% intervals.

    Only images with a human label count; within a stratum they carry w = N_h / m_h.
    """
    table = key.merge(human, on="sample_id", how="left")
    labelled = table[table["human"].notna()].copy()
    m = labelled.groupby("stratum")["sample_id"].transform("size")
    labelled["w"] = labelled["stratum_size"] / m
    truth = labelled["human"].astype(bool).to_numpy()
    weight = labelled["w"].to_numpy(dtype=float)
    strata = labelled["stratum"].to_numpy()
    rows = []
    for i, name in enumerate(judges):
        verdict = labelled[VERDICT + name].to_numpy(dtype=bool)
        counts = weighted_counts(verdict, truth, weight)
        raw = weighted_counts(verdict, truth, np.ones_like(weight))
        point = _ratios(*(np.array([counts[c]]) for c in ("tp", "fp", "fn")))
        rng = np.random.default_rng([seed, i])
        draws = stratified_bootstrap(verdict, truth, weight, strata, n_boot, rng)
        row: dict[str, Any] = {"judge": name, "n_labelled": len(labelled)}
        row |= {f"{c}_n": int(v) for c, v in raw.items()} | counts
        for metric in ("precision", "recall", "f1"):
            low, high = _interval(draws[metric])
            row |= {metric: float(point[metric][0]), f"{metric}_low": low, f"{metric}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


def agreement(labels: pd.DataFrame) -> dict[str, Any] | None:
    """Inter-rater agreement on yes/no/unsure: Cohen's kappa for two raters, Fleiss' for more,
    over the images every rater labelled (statsmodels); None with a single rater."""
    from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa, fleiss_kappa

    raters = sorted(labels["rater"].unique())
    if len(raters) < 2:
        return None
    wide = labels.pivot(index="sample_id", columns="rater", values="label").dropna()
    base = {"raters": raters, "n_items": len(wide), "categories": list(LABELS)}
    if len(wide) < 2:
        return {**base, "statistic": None, "kappa": None, "note": "fewer than 2 common images"}
    codes = wide.apply(lambda col: col.map(LABELS.index)).to_numpy()
    if len(raters) == 2:
        table = pd.crosstab(codes[:, 0], codes[:, 1]).reindex(
            index=range(3), columns=range(3), fill_value=0
        )
        with warnings.catch_warnings():  # its z statistic divides by 0 when kappa's var is 0
            warnings.simplefilter("ignore", RuntimeWarning)
            kappa = float(cohens_kappa(table.to_numpy()).kappa)
        return {**base, "statistic": "cohen", "kappa": kappa}
    kappa = float(fleiss_kappa(aggregate_raters(codes, n_cat=3)[0]))
    return {**base, "statistic": "fleiss", "kappa": kappa}


def score_sample(
    folder: Path, label_paths: list[Path], seed: int = 0, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """Write FOLDER/judge_quality.csv and .json: every judge against the human labels."""
    folder = Path(folder)
    if not label_paths:
        raise AuditError("give at least one labels file exported by the labelling page")
    if n_boot < 100:
        raise AuditError(f"--n-boot must be at least 100, got {n_boot}")
    key, meta = read_sample(folder)
    for name in ("judge_quality.csv", "judge_quality.json"):
        check_output(folder / name, inputs=label_paths, option="output")
    labels = read_labels(label_paths, key, meta["sample"])
    human = consensus(labels, key["sample_id"])
    table = judge_quality(key, meta["judges"], human, seed, n_boot)
    decided = human.set_index("sample_id")["human"]
    by_stratum = key.assign(decided=key["sample_id"].map(decided).notna().to_numpy())
    unlabelled = sorted(s for s, d in by_stratum.groupby("stratum")["decided"] if not d.any())
    result = {
        "sample": meta["sample"],
        "run": meta["run"],
        "judges": meta["judges"],
        "n_sample": len(key),
        "n_labelled": int(decided.notna().sum()),
        "n_no_label": int((human[["n_yes", "n_no", "n_unsure"]].sum(axis=1) == 0).sum()),
        "n_only_unsure": int(
            ((human["n_unsure"] > 0) & (human["n_yes"] + human["n_no"] == 0)).sum()
        ),
        "n_tied": int(((human["n_yes"] == human["n_no"]) & (human["n_yes"] > 0)).sum()),
        "n_unsure_answers": int(human["n_unsure"].sum()),
        "strata_without_labels": unlabelled,
        "agreement": agreement(labels),
        "seed": seed,
        "n_boot": n_boot,
        "inputs": [str(p) for p in label_paths],
        "conventions": [
            "human label = majority of raters' yes/no; 'unsure' answers decide nothing; ties and "
            "images with no yes/no answer are left out (counted)",
            "weighted counts: each labelled image weighs N_h / m_h (stratum size over its "
            "labelled images); precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN)",
            f"95% intervals: percentile stratified bootstrap, {n_boot} draws, images resampled "
            f"with replacement within strata, numpy default_rng([{seed}, judge index])",
            "agreement on yes/no/unsure over images every rater labelled: Cohen's kappa for two "
            "raters, Fleiss' kappa for more (statsmodels)",
            "a stratum with no labelled image is not represented (listed in strata_without_labels)",
        ],
        "table": table.to_dict(orient="records"),
    }
    write_csv(table, folder / "judge_quality.csv")
    atomic_write_text(folder / "judge_quality.json", json.dumps(_clean(result), indent=2) + "\n")
    return {**result, "table": table, "out": str(folder)}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
