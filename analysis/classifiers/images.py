"""Decoding images for classifiers: one way (PIL, RGB), bounded memory, never an exception.

Every classifier sees pixels decoded here, so scores do not depend on which library read the file.
A file that cannot be decoded becomes an error reason, not a crash: one bad file must not stop
an audit of thousands.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Refuse images with more pixels than this (PIL's own bomb limit is 2 x 89.5 M).
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
#: Decoded images are downscaled to at most this side: classifiers work at 224-640 px anyway.
MAX_SIDE = 2048


@dataclass
class Decoded:
    """An RGB image or the reason there is none, plus the file's sha256."""

    image: Image.Image | None
    error: str | None
    sha256: str | None
    original_size: tuple[int, int] | None = None


def decode_image(path: Path, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> Decoded:
    """Decode to RGB (EXIF orientation applied, as cv2.imread does); errors become reasons."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Decoded(None, f"unreadable file: {exc.strerror or exc}", None)
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return Decoded(None, "empty file (0 bytes)", digest)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # the bytes just hashed: no second read
            width, height = img.size
            if width * height > max_pixels:
                return Decoded(
                    None,
                    f"decompression bomb: {width}x{height} pixels exceeds the limit {max_pixels}",
                    digest,
                )
            if img.format == "JPEG":  # decode at reduced scale: bounded memory for huge JPEGs
                img.draft("RGB", (max_side, max_side))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Decoded(None, f"decompression bomb: {exc}", digest)
    except UnidentifiedImageError:
        return Decoded(None, "not an image (unrecognised format)", digest)
    except (OSError, SyntaxError, ValueError) as exc:
        return Decoded(None, f"truncated or corrupt image data: {exc}", digest)
    try:
        img = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError) as exc:
        return Decoded(None, f"cannot convert to RGB: {exc}", digest)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return Decoded(img, None, digest, (width, height))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def list_image_files(folder: Path) -> list[Path]:
    """Image-like files under a folder (recursively, sorted), skipping our own run files.

    Files with an unknown suffix are listed too when they sit among images: a mislabelled or
    non-image file should become an error row, not disappear from the denominator.
    """
    skip = {"scores", "parts", "results", "figures", "knn"}
    files = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.parts[0] in skip or path.name.startswith("."):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() in {".dat", ".bin", ""}:
            files.append(path)
    return files
