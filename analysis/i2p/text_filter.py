"""Prompt-text filters as a mitigation: block a prompt before any image is generated.

Two filters. A toxicity filter blocks a prompt iff its I2P `prompt_toxicity` (Perspective API)
is > tau; the I2P paper's point is tau = 0.5. Sweeping tau gives a curve: the share of prompts a
filter blocks against the share of inappropriate images it prevents (an image from a blocked
prompt is never generated, so all of that prompt's inappropriate images count as prevented).
A blocked-terms filter blocks a prompt that contains any user-given term. Both leave images to
the per-prompt counts of `analysis.i2p.table` (the dataset's SD 1.4 columns or a run's verdicts),
so no model is needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AuditError
from analysis.i2p.correlation import TOXIC_THRESHOLD
from analysis.i2p.loader import category_masks

GRID = np.arange(101) / 100.0  # 0.00, 0.01, ..., 1.00 (0.5 exactly)
CURVE_COLUMNS = [
    "config",
    "category",
    "tau",
    "paper_point",
    "n_prompts",
    "n_blocked",
    "share_blocked",
    "n_images",
    "n_inappropriate",
    "n_prevented",
    "share_prevented",
    "n_images_passing",
    "residual_rate",
]


def text_filter(prompts: Iterable[str], terms: Sequence[str]) -> np.ndarray:
    """True where a prompt contains a blocked term: case-insensitive, whole words only.

    A term matches only where it is not inside a longer word ("nude" blocks "a nude man" and
    "NUDE!" but not "nudes" or "denuded"; list each form you mean). Multi-word terms match across
    any run of whitespace. Letters, digits and '_' count as word characters (Unicode-aware).
    """
    cleaned = [" ".join(str(t).split()) for t in terms]
    if not cleaned or any(not t for t in cleaned):
        raise AuditError("blocked terms: give at least one term, and no empty ones")
    alternatives = "|".join(
        r"\s+".join(re.escape(word) for word in term.split())
        for term in sorted(set(cleaned), key=len, reverse=True)
    )
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    return np.array([bool(pattern.search(str(p))) for p in prompts], dtype=bool)


def read_terms(path: str | Path) -> list[str]:
    """Blocked terms from a text file: one per line; blank lines and '#' comments ignored.

    Read by the shared bounded reader, so a non-UTF-8 or huge file is one line naming the file,
    line and byte, not a traceback.
    """
    from analysis.store.textfile import read_text_lines

    path = Path(path)
    text = read_text_lines(path, "blocked-terms file")
    lines = (line.split("#", 1)[0].strip() for line in text)
    terms = [line for line in lines if line]
    if not terms:
        raise AuditError(f"blocked-terms file {path} lists no terms")
    return terms


def _check_prompts(prompts: pd.DataFrame, need: Iterable[str]) -> None:
    missing = [c for c in need if c not in prompts.columns]
    if missing:
        raise AuditError(f"per-prompt counts lack column(s) {', '.join(missing)}")


def with_toxicity(prompts: pd.DataFrame, i2p: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt counts (`table.dataset_prompts` / `run_prompts`) plus I2P's prompt_toxicity."""
    _check_prompts(prompts, ["prompt_id"])
    tox = i2p.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_toxicity"]
    values = prompts["prompt_id"].astype(str).map(tox.rename(index=str))
    if values.isna().any():
        unknown = prompts["prompt_id"][values.isna()].iloc[0]
        raise AuditError(f"prompt id {unknown!r} is not in the I2P data: no toxicity for it")
    return prompts.assign(prompt_toxicity=values.to_numpy(float))


def _cell(
    tox: np.ndarray, images: np.ndarray, hits: np.ndarray, taus: np.ndarray
) -> dict[str, np.ndarray]:
    """Counts at every tau for one (config, category): prompts with toxicity > tau are blocked."""
    order = np.argsort(tox, kind="stable")
    tox, images, hits = tox[order], images[order], hits[order]
    passing = np.searchsorted(tox, taus, side="right")  # prompts with toxicity <= tau
    pre_images = np.concatenate([[0.0], np.cumsum(images)])
    pre_hits = np.concatenate([[0.0], np.cumsum(hits)])
    n_images, n_hits = pre_images[-1], pre_hits[-1]
    prevented = n_hits - pre_hits[passing]
    images_passing = pre_images[passing]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "n_prompts": np.full(len(taus), len(tox)),
            "n_blocked": len(tox) - passing,
            "share_blocked": (len(tox) - passing) / len(tox) if len(tox) else np.nan * taus,
            "n_images": np.full(len(taus), n_images),
            "n_inappropriate": np.full(len(taus), n_hits),
            "n_prevented": prevented,
            "share_prevented": prevented / n_hits if n_hits > 0 else np.nan * taus,
            "n_images_passing": images_passing,
            "residual_rate": pre_hits[passing]
            / np.where(images_passing > 0, images_passing, np.nan),
        }


def toxicity_curve(
    prompts: pd.DataFrame, thresholds: Sequence[float] | None = None
) -> pd.DataFrame:
    """The toxicity filter's curve per config and category ('all', then I2P's order).

    `prompts`: one row per prompt (and config) with categories, n_images, n_inappropriate and
    prompt_toxicity (see `with_toxicity`). tau runs over `thresholds` (default: 0, 0.01, ..., 1,
    every distinct toxicity value, where the curve steps, and 0.5); `paper_point` marks tau = 0.5.
    Shares: blocked over prompts, prevented over the category's inappropriate images;
    residual_rate is the inappropriate share of the images that still get generated.
    """
    _check_prompts(prompts, ["categories", "n_images", "n_inappropriate", "prompt_toxicity"])
    tox_all = prompts["prompt_toxicity"].to_numpy(float)
    if not np.isfinite(tox_all).all():
        raise AuditError("per-prompt counts: prompt_toxicity has missing values")
    if thresholds is None:
        taus = np.unique(np.concatenate([GRID, np.unique(tox_all), [TOXIC_THRESHOLD]]))
    else:
        taus = np.unique(np.asarray(list(thresholds), dtype=float))
    configs = prompts["config"] if "config" in prompts.columns else pd.Series("", prompts.index)
    frames = []
    for config in dict.fromkeys(configs):
        part = prompts[(configs == config).to_numpy()]
        for category, mask in category_masks(part["categories"]).items():
            sub = part[mask]
            cell = _cell(
                sub["prompt_toxicity"].to_numpy(float),
                sub["n_images"].to_numpy(float),
                sub["n_inappropriate"].to_numpy(float),
                taus,
            )
            frames.append(
                pd.DataFrame({"config": config, "category": category, "tau": taus, **cell}).assign(
                    paper_point=taus == TOXIC_THRESHOLD
                )
            )
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS]


def blocked_point(prompts: pd.DataFrame, blocked: np.ndarray, config: str = "") -> pd.DataFrame:
    """The same counts for any fixed block mask (e.g. `text_filter`), per category; tau is NaN."""
    _check_prompts(prompts, ["categories", "n_images", "n_inappropriate"])
    blocked = np.asarray(blocked, dtype=bool)
    if blocked.shape != (len(prompts),):
        raise AuditError(f"block mask has {blocked.size} entries for {len(prompts)} prompts")
    # blocked prompts sort above a tau of 0.5, passing ones below it
    pseudo = prompts.assign(prompt_toxicity=np.where(blocked, 1.0, 0.0), config=config)
    out = toxicity_curve(pseudo, thresholds=[TOXIC_THRESHOLD])
    return out.assign(tau=np.nan, paper_point=False)
