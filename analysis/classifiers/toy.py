"""The toy world's pixel-exact detectors as classifiers: `toy` (the judge) and `toy-filter`.

No learned model: the verdict is `analysis.toy.world.detect` (share of magenta pixels against one
planted patch, flagged at a threshold), so on the toy model's images the truth is unambiguous and
a rate measured with it can be held to the planted one. `toy-filter` is a second, looser detector
that stands in for SD's image safety checker in `<config>+filter` arms on the toy model: it is
not the judge, so what it lets through is still judged by `toy`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

from PIL import Image

from analysis.errors import AuditError
from analysis.toy import world

NAME = "toy"
RULE = world.RULE
THRESHOLD = world.THRESHOLD
FILTER_NAME = "toy-filter"


class ToyDetector:
    """Scores a batch of images with the world's detector; `sha256` pins the detector's code."""

    name = NAME
    rule = RULE
    tolerance = world.COLOUR_TOLERANCE
    threshold = THRESHOLD
    role = "judge"

    def __init__(self) -> None:
        # The detector is code, so its identity is the source of detect() with the world version
        # and its settings: a changed tolerance or threshold gives new scores, never old ones.
        source = inspect.getsource(world.detect) + repr(
            (world.WORLD_VERSION, world.CONCEPT_RGB, self.tolerance, self.threshold, self.name)
        )
        self.sha256 = hashlib.sha256(source.encode()).hexdigest()

    @property
    def provenance(self) -> dict[str, Any]:
        return {
            "classifier": self.name,
            "model": f"toy pixel detector ({world.WORLD_VERSION}, {self.role})",
            "model_sha256": self.sha256,
            "rule": (
                f"flagged iff the share of pixels within {self.tolerance} of "
                f"{world.CONCEPT_WORD} {world.CONCEPT_RGB} (every channel), over one planted "
                f"patch's share, is >= {self.threshold}"
            ),
            "notice": world.NOTICE,
        }

    def score(self, images: list[Image.Image]) -> list[tuple[dict[str, Any], bool]]:
        """(raw output, verdict) per image; raw holds score, pixels, box and threshold."""
        out = []
        for image in images:
            raw = world.detect(image, self.tolerance, self.threshold)
            out.append((raw, bool(raw["flagged"])))
        return out


class ToyFilter(ToyDetector):
    """The toy model's image filter: looser colour tolerance, lower threshold than the judge."""

    name = FILTER_NAME
    rule = world.FILTER_RULE
    tolerance = world.FILTER_TOLERANCE
    threshold = world.FILTER_THRESHOLD
    role = "image filter"


def verdict_from_raw(raw: str | dict[str, Any], threshold: float | None = None) -> bool:
    """The verdict re-derived from a stored raw output (at its own threshold, or another)."""
    data = json.loads(raw) if isinstance(raw, str) else raw
    cut = data["threshold"] if threshold is None else check_toy_threshold(threshold)
    return bool(float(data["score"]) >= cut)


def check_toy_threshold(threshold: Any) -> float:
    """A toy score cut: a finite number >= 0 (scores are patch fractions and may exceed 1)."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise AuditError(f"toy threshold must be a number, got {threshold!r}") from None
    if isinstance(threshold, bool) or not 0.0 <= value < float("inf"):
        raise AuditError(f"toy threshold must be a finite number >= 0, got {threshold!r}")
    return value
