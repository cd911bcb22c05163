"""CLIP distance, 1 - cos(image, caption), with a bootstrap interval over captions.

The embeddings come from transformers' CLIPModel through `analysis.classifiers.clip` (the same
loader Q16 uses, so the tiny random CLIP runs this code in tests). Nothing is downloaded: a hub
id must already be in the local Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import AuditError
from analysis.stats.bootstrap import cluster_ratio_interval

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def check_clip_weights(spec: str) -> None:
    """Fail before any work when the CLIP weights are not on this machine."""
    from analysis.classifiers.clip import check_clip_available

    check_clip_available(spec, purpose="CLIP distance")


def load_clip_for_quality(spec: str, device: str = "cpu") -> Any:
    """A ClipBundle with its weights' sha256 added to its provenance."""
    from analysis.classifiers.clip import load_clip

    check_clip_weights(spec)
    bundle = load_clip(spec, device=device)
    folder = _weights_folder(spec)
    if folder is not None:
        from analysis.store.hashing import weights_sha256

        bundle.provenance["weights_sha256"] = weights_sha256(folder, "--clip-model")
    return bundle


def _weights_folder(spec: str) -> Path | None:
    if spec == "tiny":
        return None
    if Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def clip_distances(
    bundle: Any, image_paths: list[Path], captions: list[str], batch_size: int = 32
) -> np.ndarray:
    """1 - cosine similarity of each image's and its caption's CLIP embedding."""
    from PIL import Image

    if len(image_paths) != len(captions):
        raise AuditError("CLIP distance needs one caption per image")
    out = []
    for start in range(0, len(image_paths), batch_size):
        paths = image_paths[start : start + batch_size]
        images = []
        for p in paths:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        img = bundle.embed_images(images)
        txt = bundle.embed_texts(captions[start : start + batch_size])
        out.append(1.0 - (img.astype(np.float64) * txt.astype(np.float64)).sum(axis=1))
    return np.concatenate(out) if out else np.empty(0)


def mean_interval(
    values: np.ndarray, n_boot: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over captions (one image per caption).

    The mean is sum(values) / sum(ones), so this is our cluster bootstrap with each caption a
    cluster of one image: same resampling scheme and seed convention as every other interval.
    """
    values = np.asarray(values, dtype=float)
    return cluster_ratio_interval(values, np.ones_like(values), n_boot, seed, confidence)
