"""FID with torchmetrics' FrechetInceptionDistance, on local Inception weights only.

torchmetrics (with torch-fidelity's FID Inception, the TF 2015-12-05 graph ported to PyTorch)
is a maintained, widely cited implementation; we only feed it images. Its weights would be
downloaded on first use, so we look for the file first and hand its path over: nothing here ever
downloads. Reference features are computed once and kept across configs
(``reset_real_features=False``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from analysis.errors import AuditError, require

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)
INCEPTION_ENV = "T2I_AUDIT_INCEPTION_WEIGHTS"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}

ReferencePreprocess = Literal["center-crop", "none"]


def conventions(preprocess: ReferencePreprocess, size: tuple[int, int]) -> dict[str, str]:
    """The FID conventions of this implementation, stated next to every number."""
    ref = (
        f"center-cropped to the generated aspect ratio, resized to {size[0]}x{size[1]} "
        "(PIL bicubic), then like the generated images"
        if preprocess == "center-crop"
        else "fed at their own size (aspect ratio not kept by the 299x299 resize)"
    )
    return {
        "fid_library": "torchmetrics.image.fid.FrechetInceptionDistance",
        "fid_weights": f"torch-fidelity inception-v3-compat ({INCEPTION_FILE}, FID Inception "
        "converted from TensorFlow's 2015-12-05 graph)",
        "fid_feature_layer": "2048-d pool3 (final average pool)",
        "fid_resize": "uint8 RGB, bilinear resize to 299x299 like TF1.x (antialias=False, as "
        "torch-fidelity and the original TF FID), scaled to [-1, 1]",
        "fid_reference_preprocess": ref,
        "fid_statistics": "float64 mean/covariance, unbiased covariance (n - 1)",
    }


def resolve_inception_weights(path: str | Path | None = None) -> Path:
    """The FID Inception file: --inception-weights, $T2I_AUDIT_INCEPTION_WEIGHTS, or torch hub.

    Raises an AuditError naming the file, its URL and where to put it when none exists.
    """
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    candidates = [Path(p) for p in (path, os.environ.get(INCEPTION_ENV)) if p] or [hub]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise AuditError(
        f"FID Inception weights not found (looked at {', '.join(map(str, candidates))}). "
        f"Download {INCEPTION_URL} on a machine with network and put it at {hub}, or pass "
        f"its path with --inception-weights or ${INCEPTION_ENV}; t2i-audit never downloads it"
    )


def build_fid(
    weights: Path | None = None, feature_extractor: Any = None, device: str = "cpu"
) -> Any:
    """A FrechetInceptionDistance that keeps its reference features across reset().

    `feature_extractor` (an nn.Module mapping uint8 images to features) replaces Inception in
    tests; otherwise `weights` must be a local file.
    """
    require("torchmetrics", "quality", "FID")
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature_extractor is not None:
        metric = FrechetInceptionDistance(feature=feature_extractor, reset_real_features=False)
    else:
        if weights is None or not Path(weights).is_file():
            raise AuditError(f"FID Inception weights {weights} do not exist")
        require("torch_fidelity", "inception", "FID's Inception network (with torchvision)")
        metric = FrechetInceptionDistance(
            feature=2048,
            reset_real_features=False,
            feature_extractor_weights_path=str(weights),
            antialias=False,
        )
    return metric.to(device)


def list_images(folder: str | Path, what: str = "--reference") -> list[Path]:
    """Image files under a folder (recursively), sorted, so the order is reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"{what} {folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise AuditError(f"{what} {folder} holds {len(files)} image(s); FID needs at least 2")
    return files


def listing_sha256(folder: Path, files: list[Path]) -> str:
    """Identity of a reference set: sorted relative names and byte sizes (cheap for 40k files)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(folder)}:{f.stat().st_size}\n".encode())
    return digest.hexdigest()


def image_batches(
    paths: list[Path],
    batch_size: int,
    size: tuple[int, int] | None = None,
) -> Iterator[Any]:
    """uint8 (N, 3, H, W) tensors; consecutive images of one size share a batch.

    With `size` (width, height) each image is first center-cropped to that aspect ratio and
    resized with PIL bicubic.
    """
    import numpy as np
    import torch
    from PIL import Image

    batch: list[np.ndarray] = []
    for path in paths:
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError as exc:
            raise AuditError(f"image {path} cannot be read: {exc}") from None
        if size is not None:
            image = _fit(image, size)
        array = np.asarray(image, dtype=np.uint8)
        if batch and (array.shape != batch[0].shape or len(batch) == batch_size):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
            batch = []
        batch.append(array)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


def _fit(image: Any, size: tuple[int, int]) -> Any:
    """Center-crop to the aspect ratio of `size`, then resize to it (bicubic)."""
    from PIL import Image

    w, h = image.size
    tw, th = size
    if w * th > h * tw:  # too wide
        cw, ch = round(h * tw / th), h
    else:
        cw, ch = w, round(w * th / tw)
    left, top = (w - cw) // 2, (h - ch) // 2
    image = image.crop((left, top, left + cw, top + ch))
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def add_images(metric: Any, batches: Iterator[Any], real: bool) -> int:
    """Feed uint8 batches to the metric; returns how many images went in."""
    import torch

    device = metric.device
    n = 0
    with torch.no_grad():
        for batch in batches:
            metric.update(batch.to(device), real=real)
            n += len(batch)
    return n


def fid_of(metric: Any, paths: list[Path], batch_size: int) -> float:
    """FID of these generated images against the reference features already in `metric`."""
    if len(paths) < 2:
        raise AuditError(f"FID needs at least 2 generated images, got {len(paths)}")
    metric.reset()  # forgets generated features only (reset_real_features=False)
    add_images(metric, image_batches(paths, batch_size), real=False)
    return float(metric.compute())
