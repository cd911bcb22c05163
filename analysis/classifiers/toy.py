"""The toy world's pixel-exact concept detector as a classifier (`--classifier toy`).

No learned model: the verdict is `analysis.toy.world.detect` (share of magenta pixels against one
planted patch, flagged at `THRESHOLD`), so on the toy model's images the truth is unambiguous and
a rate measured with it can be held to the planted one.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from PIL import Image

from analysis.toy import world

NAME = "toy"
RULE = world.RULE
THRESHOLD = world.THRESHOLD


class ToyDetector:
    """Scores a batch of images with the world's detector; `sha256` pins the detector's code."""

    rule = RULE
    threshold = THRESHOLD

    def __init__(self) -> None:
        # The detector is code, so its identity is the source of detect() with the world version:
        # a changed tolerance or threshold gives new scores rather than silently reusing old ones.
        source = inspect.getsource(world.detect) + repr(
            (world.WORLD_VERSION, world.CONCEPT_RGB, world.COLOUR_TOLERANCE, world.THRESHOLD)
        )
        self.sha256 = hashlib.sha256(source.encode()).hexdigest()

    @property
    def provenance(self) -> dict[str, Any]:
        return {
            "classifier": NAME,
            "model": f"toy pixel detector ({world.WORLD_VERSION})",
            "model_sha256": self.sha256,
            "rule": (
                f"flagged iff the share of pixels within {world.COLOUR_TOLERANCE} of "
                f"{world.CONCEPT_WORD} {world.CONCEPT_RGB} (every channel), over one planted "
                f"patch's share, is >= {world.THRESHOLD}"
            ),
            "notice": world.NOTICE,
        }

    def score(self, images: list[Image.Image]) -> list[tuple[dict[str, Any], bool]]:
        """(raw output, verdict) per image; raw holds score, pixels, box and threshold."""
        out = []
        for image in images:
            raw = world.detect(image)
            out.append((raw, bool(raw["flagged"])))
        return out
