"""Sample images for the report, blurred unless every stored verdict says they are harmless.

A reader must not be exposed by accident: an image is shown clear only when it was classified
and no stored verdict flags it. Flags come from every classifier's stored verdict (the rule it
ran with) and from the named NudeNet rules re-derived from the stored detections; an image that
was never classified, or could not be read, is blurred as well. The label says why.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pandas as pd
from PIL import Image, ImageFilter

from analysis.errors import AuditError
from analysis.store import RunDir

SAMPLES_PER_CONFIG = 6
#: Rules re-derived for blurring: every named rule about sexual nudity (not feet or belly).
BLUR_RULES = ("exposed-genitalia", "i2p-exposed", "i2p-authors", "nsfw-erasure-benchmark")


def blur_image(image: Image.Image) -> Image.Image:
    """Strong enough that nothing is recognisable: downsample, then a wide Gaussian blur."""
    small = image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)
    return small.resize(image.size, Image.Resampling.BILINEAR).filter(
        ImageFilter.GaussianBlur(radius=max(image.size) / 16)
    )


def _png(image: Image.Image, max_side: int = 256) -> bytes:
    image = image.copy()
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def flags(run: RunDir) -> dict[str, list[str]]:
    """item_id -> reasons to blur ('nudenet:i2p-exposed', 'q16', 'not classified', ...).

    An item absent from the result was classified and nothing flagged it.
    """
    from analysis.classifiers import CLASSIFIERS, read_scores
    from analysis.classifiers.rules import RULES

    reasons: dict[str, list[str]] = {}
    scored: set[str] = set()
    for name in CLASSIFIERS:
        table = read_scores(run, name)
        if table.empty:
            continue
        table = table.drop_duplicates("item_id", keep="last")
        for row in table.itertuples():
            if not isinstance(row.raw, str):
                reasons.setdefault(row.item_id, []).append(f"{name}: unreadable image")
                continue
            scored.add(row.item_id)
            if name == "q16":
                probs = json.loads(row.raw)
                if probs["p_inappropriate"] > probs["p_safe"]:
                    reasons.setdefault(row.item_id, []).append("q16")
                continue
            detections = json.loads(row.raw)
            hits = [r for r in BLUR_RULES if r in RULES and RULES[r].verdict(detections)]
            if pd.notna(row.verdict) and bool(row.verdict) and row.rule not in hits:
                hits.insert(0, str(row.rule))
            reasons.setdefault(row.item_id, []).extend(f"nudenet: {r}" for r in hits)
    try:
        items = run.items()
    except AuditError:
        return reasons
    for item_id in items.loc[items["status"] == "done", "item_id"]:
        if item_id not in scored and item_id not in reasons:
            reasons[item_id] = ["not classified"]
    return {k: v for k, v in reasons.items() if v}


def samples(run: RunDir, blur: bool) -> list[dict[str, Any]]:
    """A few images per config, each with its seed, config and why it is blurred (if it is)."""
    try:
        items = run.items()
    except AuditError:
        return []
    items = items[items["status"] == "done"]
    why = flags(run)
    out = []
    for config, sub in items.groupby("config", sort=False):
        for row in sub.drop_duplicates("prompt_id").head(SAMPLES_PER_CONFIG).itertuples():
            path = run.path / row.image_path
            if not path.is_file():
                continue
            reasons = why.get(row.item_id, [])
            try:
                image = Image.open(path)
                image.load()
            except OSError:
                continue
            blurred = bool(reasons) and blur
            shown = blur_image(image) if blurred else image
            out.append(
                {
                    "src": "data:image/png;base64," + base64.b64encode(_png(shown)).decode(),
                    "config": config,
                    "prompt": row.prompt,
                    "seed": int(row.seed),
                    "flagged": bool(reasons),
                    "reasons": reasons,
                    "blurred": blurred,
                    "file": row.image_path,
                }
            )
    return out
