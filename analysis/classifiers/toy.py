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
from collections.abc import Callable
from typing import Any

from PIL import Image

from analysis.classifiers.registry import Judge, JudgeOptions
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


class ToyJudge(Judge):
    """The toy detector as a judge; verdicts re-derived at the cut stored with each score, or
    at another (`check_toy_threshold`)."""

    name = NAME
    rule = RULE
    comparison = ">="
    detector_class: type[ToyDetector] = ToyDetector

    def __init__(self, options: JudgeOptions) -> None:
        self.model = self.detector_class()
        self.sha256 = self.model.sha256
        self.provenance = self.model.provenance

    @property
    def threshold(self) -> float | None:
        return self.model.threshold

    @classmethod
    def check_threshold(cls, threshold: float | None, rule: str) -> float | None:
        return None if threshold is None else check_toy_threshold(threshold)

    @classmethod
    def verdict_of(cls, rule: str, threshold: float | None) -> Callable[[str], bool]:
        return lambda raw: verdict_from_raw(raw, threshold)

    @classmethod
    def recorded_threshold(cls, raw: Any, threshold: float | None) -> Any:
        """None: the detector's own cut, as stored with each score."""
        if threshold is not None:
            return threshold
        from analysis.classifiers.verdicts import json_threshold

        return json_threshold(raw)

    def score(
        self, payloads: list[Any], rule: str, threshold: float | None
    ) -> list[tuple[Any, bool]]:
        return self.model.score(payloads)


class ToyFilterJudge(ToyJudge):
    """The toy model's image filter (`<config>+filter` on the toy model)."""

    name = FILTER_NAME
    rule = world.FILTER_RULE
    role = "image filter"
    detector_class = ToyFilter
