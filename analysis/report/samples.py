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

from analysis.classifiers.images import decode_image
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


def read_all_scores(run: RunDir) -> dict[str, pd.DataFrame]:
    """Each classifier's score rows (latest per item), read once for the whole report."""
    from analysis.classifiers import CLASSIFIERS, read_scores

    tables = {name: read_scores(run, name) for name in CLASSIFIERS}
    return {n: t.drop_duplicates("item_id", keep="last") for n, t in tables.items() if not t.empty}


def flags(
    run: RunDir,
    items: pd.DataFrame | None = None,
    scores: dict[str, pd.DataFrame] | None = None,
    only: set[str] | None = None,
) -> dict[str, list[str]]:
    """item_id -> reasons to blur ('nudenet:i2p-exposed', 'q16', 'not classified', ...).

    An item absent from the result was classified and nothing flagged it. `only` limits the
    work to the items shown (a report shows a few of possibly 100,000s).
    """
    from analysis.classifiers.registry import get_judge
    from analysis.classifiers.rules import RULES

    scores = read_all_scores(run) if scores is None else scores
    reasons: dict[str, list[str]] = {}
    scored: set[str] = set()
    for name, table in scores.items():
        if only is not None:
            table = table[table["item_id"].isin(only)]
        judge = get_judge(name)
        # q16, toy...: re-derived from raw under their one rule; NudeNet: every blur rule
        one_rule = judge.verdict_of(judge.rule, None) if len(judge.rules()) == 1 else None
        for row in table.itertuples():
            if not isinstance(row.raw, str):
                reasons.setdefault(row.item_id, []).append(f"{name}: unreadable image")
                continue
            scored.add(row.item_id)
            if one_rule is not None:
                verdict = one_rule(row.raw)
                if verdict is None or verdict:  # no verdict (a VLM answer that does not parse)
                    why = judge.rule if verdict else "no verdict"
                    reasons.setdefault(row.item_id, []).append(f"{name}: {why}")
                continue
            detections = json.loads(row.raw)
            hits = [r for r in BLUR_RULES if r in RULES and RULES[r].verdict(detections)]
            if pd.notna(row.verdict) and bool(row.verdict) and row.rule not in hits:
                hits.insert(0, str(row.rule))
            reasons.setdefault(row.item_id, []).extend(f"nudenet: {r}" for r in hits)
    if items is None:
        try:
            items = run.items()
        except AuditError:
            return reasons
    done = items.loc[items["status"] == "done", "item_id"]
    for item_id in done if only is None else done[done.isin(only)]:
        if item_id not in scored and item_id not in reasons:
            reasons[item_id] = ["not classified"]
    return {k: v for k, v in reasons.items() if v}


def samples(
    run: RunDir,
    blur: bool,
    items: pd.DataFrame | None = None,
    scores: dict[str, pd.DataFrame] | None = None,
) -> list[dict[str, Any]]:
    """A few images per config, each with its seed, config and why it is blurred (if it is)."""
    if items is None:
        try:
            items = run.items()
        except AuditError:
            return []
    done = items[items["status"] == "done"]
    shown = pd.concat(
        [sub.drop_duplicates("prompt_id").head(SAMPLES_PER_CONFIG) for _, sub in
         done.groupby("config", sort=False)]
    ) if len(done) else done  # fmt: skip
    why = flags(run, items, scores, only=set(shown["item_id"]))
    out = []
    for config, sub in shown.groupby("config", sort=False):
        for row in sub.itertuples():
            path = run.path / row.image_path
            if not path.is_file():
                continue
            reasons = why.get(row.item_id, [])
            decoded = decode_image(path)  # bounded: a decompression bomb is skipped, not fatal
            if decoded.image is None:
                continue
            image = decoded.image
            blurred = bool(reasons) and blur
            picture = blur_image(image) if blurred else image
            out.append(
                {
                    "src": "data:image/png;base64," + base64.b64encode(_png(picture)).decode(),
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
