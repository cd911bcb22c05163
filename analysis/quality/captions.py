"""COCO captions for the quality side: read, sample n reproducibly, record what was drawn.

The SLD paper samples 30k COCO 2014 validation captions. Its text does not say how; we draw
*one caption per image*: n distinct image ids without replacement, then one of each image's
(~5) captions, all from ``numpy.random.default_rng(sample_seed)``. One caption per image keeps the
generated set as diverse as the reference set (five captions of one photo would repeat a
scene). The drawn ids, captions and the seed are written to the run, so the set can be re-made.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import AuditError

METHOD = (
    "one caption per image: n distinct image_ids drawn without replacement from the sorted "
    "ids, then one caption of each (annotations sorted by id), numpy default_rng(sample_seed)"
)


@dataclass(frozen=True)
class Caption:
    """One caption: its COCO image id and annotation id (or row numbers for a bare CSV)."""

    image_id: str
    caption_id: str
    caption: str

    @property
    def prompt_id(self) -> str:
        """A folder-safe id for the run's image path."""
        return f"img{self.image_id}-cap{self.caption_id}"


def read_captions(path: str | Path) -> list[Caption]:
    """Captions from COCO's `captions_val2014.json` or a CSV with a `caption` column.

    A CSV may also carry `image_id` and `id` (the caption's id); without them every row is its
    own image and its row number is its id.
    """
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"captions file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AuditError(f"captions file {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        captions = _coco_json(path, text)
    elif path.suffix.lower() == ".csv":
        captions = _csv(path, text)
    else:
        raise AuditError(
            f"captions file {path}: use COCO's captions_*.json or a .csv with a 'caption' column"
        )
    if not captions:
        raise AuditError(f"captions file {path} holds no captions")
    ids = [c.caption_id for c in captions]
    if len(set(ids)) < len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise AuditError(f"captions file {path} repeats the caption id {dup!r}")
    return captions


def _coco_json(path: Path, text: str) -> list[Caption]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AuditError(f"captions file {path} is not JSON ({exc.msg})") from None
    rows = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise AuditError(
            f"captions file {path} has no 'annotations' list (is it COCO's captions_val2014.json?)"
        )
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"image_id", "caption"} <= row.keys():
            raise AuditError(f"captions file {path}: annotation {i} lacks image_id or caption")
        caption = str(row["caption"]).strip()
        if not caption:
            raise AuditError(f"captions file {path}: annotation {i} has an empty caption")
        out.append(_caption(path, row["image_id"], row.get("id", i), caption, f"annotation {i}"))
    return out


def _csv(path: Path, text: str) -> list[Caption]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "caption" not in reader.fieldnames:
        raise AuditError(f"captions file {path} has no 'caption' column")
    out = []
    for n, row in enumerate(reader, 1):
        caption = (row.get("caption") or "").strip()
        if not caption:
            raise AuditError(f"captions file {path}: row {n} has an empty caption")
        image_id = row.get("image_id") or n
        out.append(_caption(path, image_id, row.get("id") or n, caption, f"row {n}"))
    return out


def _caption(path: Path, image_id: Any, caption_id: Any, caption: str, where: str) -> Caption:
    ids = []
    for name, value in (("image_id", image_id), ("id", caption_id)):
        text = str(value).strip()
        if not text.isdigit():
            raise AuditError(f"captions file {path}: {where}: {name} {value!r} is not a number")
        ids.append(str(int(text)))
    return Caption(ids[0], ids[1], " ".join(caption.split()))


def sample_captions(captions: list[Caption], n: int, seed: int) -> list[Caption]:
    """n captions of n distinct images, reproducible from `seed` (see METHOD)."""
    by_image: dict[int, list[Caption]] = {}
    for c in captions:
        by_image.setdefault(int(c.image_id), []).append(c)
    images = sorted(by_image)
    if not 1 <= n <= len(images):
        raise AuditError(
            f"--n {n}: the captions cover {len(images)} images; choose 1 to {len(images)}"
        )
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), size=n, replace=False)
    out = []
    for index in chosen:
        group = sorted(by_image[images[int(index)]], key=lambda c: int(c.caption_id))
        out.append(group[int(rng.integers(len(group)))])
    return out


def sampling_record(path: str | Path, captions: list[Caption], n: int, seed: int) -> dict:
    """What to store next to the run: source file hash, seed, method and every drawn caption."""
    data = Path(path).read_bytes()
    return {
        "source": str(path),
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "n": n,
        "sample_seed": seed,
        "method": METHOD,
        "captions": [asdict(c) for c in captions],
    }
