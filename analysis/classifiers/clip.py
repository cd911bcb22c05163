"""CLIP models for Q16 and text queries: a hub id, a local folder, or a tiny random one.

The tiny CLIP (random weights, built in code, projection dim 32) runs the exact code path of the
real ViT-L/14 in tests, where no weights can be downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from analysis.errors import AuditError

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


@dataclass
class ClipBundle:
    """A CLIP model with its tokenizer and image preprocessing; embeddings are L2-normalised."""

    model: Any
    tokenizer: Any
    image_processor: Any
    provenance: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        return _normalise(out if isinstance(out, torch.Tensor) else out.pooler_output)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        return _normalise(out if isinstance(out, torch.Tensor) else out.pooler_output)


#: the vision tower of every tiny random-weight CLIP built in code (Q16, the safety checker)
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "image_size": 32,
    "patch_size": 8,
}


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True)).cpu().numpy()


def tiny_clip(seed: int = 0) -> ClipBundle:
    """Random-weight CLIP with small text and vision towers; deterministic, no files."""
    from transformers import CLIPConfig, CLIPModel
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor

    from analysis.generation.tiny import tiny_tokenizer

    config = CLIPConfig(
        text_config={
            "vocab_size": 514,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
        },
        vision_config=TINY_VISION,
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_convert_rgb=True
    )
    return ClipBundle(
        model, tiny_tokenizer(), processor, {"id": "tiny", "weights": "random (seed 0)"}
    )


def check_clip_available(spec: str | None = None, purpose: str = "Q16") -> None:
    """Fail fast (before hours of generation) when the CLIP weights (for Q16, or CLIP distance)
    are not on disk."""
    spec = spec or DEFAULT_CLIP
    if spec == "tiny":
        return
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AuditError(
                f"--clip-model {spec} is a folder without config.json (not a CLIP model)"
            )
        return
    if spec.startswith((".", "/", "~")):
        raise AuditError(f"--clip-model {spec} does not exist")
    from huggingface_hub import try_to_load_from_cache

    from analysis.hub import OPT_IN, downloads_allowed

    if downloads_allowed():
        return
    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except Exception:  # an id the hub library cannot parse
        cached = None
    if not isinstance(cached, str):
        raise AuditError(
            f"CLIP model {spec!r} (for {purpose}) is not in the Hugging Face cache; download it "
            f"once (`huggingface-cli download {spec}`), pass a local folder with --clip-model, "
            f"or {OPT_IN}"
        )


def load_clip(spec: str | None = None, device: str = "cpu") -> ClipBundle:
    """'tiny', a hub id (default openai/clip-vit-large-patch14) or a local folder."""
    spec = spec or DEFAULT_CLIP
    if spec == "tiny":
        return tiny_clip()
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import CLIPModel, CLIPTokenizerFast

    from analysis.hub import OPT_IN, downloads_allowed, not_available, snapshot_provenance

    offline = not downloads_allowed()
    local = Path(spec).is_dir()
    try:
        kwargs = {"local_files_only": offline or local}
        model = CLIPModel.from_pretrained(spec, **kwargs).to(device).eval()
        tokenizer = CLIPTokenizerFast.from_pretrained(spec, **kwargs)
        processor = CLIPImageProcessor.from_pretrained(spec, **kwargs)
    except Exception as exc:
        advice = (
            f"Download it on a machine with network (`huggingface-cli download {spec}`) and copy "
            f"the cache here, or pass a local folder with --clip-model"
            f"{', or ' + OPT_IN if offline else ''}"
        )
        raise not_available("CLIP model", spec, local, advice, exc) from exc
    prov = snapshot_provenance(spec, model.config)
    return ClipBundle(model, tokenizer, processor, prov, device)
