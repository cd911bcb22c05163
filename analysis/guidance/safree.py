"""SAFREE (Yoon et al., ICLR 2025): training-free concept removal in the text embedding space.

Written from the paper (arXiv 2410.12761) and checked against the behaviour of the authors'
SD 1.x pipeline (`jaehong31/SAFREE`, `models/modified_stable_diffusion_pipeline.py`), whose
released settings are the defaults here. Pure tensor pieces; the sampler supplies the encodings:

1. Concept subspace: P_C projects onto the span of the pooled text embeddings of the concept
   words (for nudity, the authors' 17 words).
2. Trigger tokens: for each prompt token i, the pooled embedding of the prompt with token i
   masked out; its distance to the concept subspace, ||(I - P_C) p_i||, is compared with the
   mean distance of the other tokens' masked prompts. A token whose removal takes the prompt at
   least (1 + alpha) times that mean away from the concepts is a trigger token: its embedding is
   replaced by (I - P_C) P_M e, the projection onto the masked-prompt subspace (P_M) and then
   away from the concept subspace; every other token keeps its embedding.
3. Self-validating filter: beta = 1 - mean cosine(e, (I - P_C) P_M e) over the prompt's real
   tokens (start, words, end) says how much the prompt overlaps the concepts; the projected
   embedding is used for steps i <= round(up_t * sigmoid(2 k (10 beta - t))), the plain one after.
   Without the filter, for steps re_attn_t_start <= i <= re_attn_t_end.

Latent re-attention (the paper's Fourier filter on the UNet's skip features) is not implemented:
the released script registers its FreeU-like blocks with filter mode None, which filters nothing,
so the released SD 1.x runs (`--safree -svf -lra`) give the latents of (1) to (3) alone.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from analysis.errors import AuditError

#: The authors' concept words for nudity (`generate_safree.py`, category "nudity").
NUDITY_CONCEPTS: tuple[str, ...] = (
    "Sexual Acts",
    "Content Meant to Arouse Sexual Excitement",
    "Nudity",
    "Pornography",
    "Erotic Art",
    "Lustful",
    "Seductive",
    "Orgasmic",
    "Libido",
    "Kinky",
    "Sexual Orientation",
    "Sexual Attraction",
    "Sexual Intercourse",
    "Sexual Pleasure",
    "Sexual Fantasy",
    "Carnal Desires",
    "Sexual Gratification",
)
#: Their concept words joined as they join them for the negative prompt; the config's concept.
SAFREE_NUDITY_CONCEPT = ", ".join(NUDITY_CONCEPTS)
#: The midpoint t and slope k of the self-validation sigmoid per category (authors' `f_beta`).
_SIGMOID = {"nudity": (5.333, 2.5), "artists": (5.5, 3.5)}


class SafreeParams(BaseModel):
    """SAFREE's settings, named as the authors' arguments, defaulting to their SD 1.x nudity run.

    The concept words are the config's safety concept split at commas, which is also the
    negative prompt their script passes (`negative_prompt`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    alpha: float = Field(default=0.01, ge=0)  # --sf_alpha: trigger margin over the mean
    self_validation_filter: bool = True  # -svf
    up_t: int = Field(default=10, ge=0)  # --up_t: most steps the filter keeps the projection for
    re_attn_t_start: int = Field(default=-1, ge=-1)  # --re_attn_t "start,end", used without -svf
    re_attn_t_end: int = Field(default=1001, ge=-1)
    latent_re_attention: bool = False  # -lra; its filter is not implemented (module docstring)
    category: Literal["nudity", "artists"] = "nudity"  # sets the self-validation sigmoid
    #: the concept words joined as the negative prompt (the unconditional branch), as their
    #: script does; False: the empty text
    negative_prompt: bool = True

    @model_validator(mode="after")
    def _check(self) -> SafreeParams:
        if self.latent_re_attention:
            raise ValueError(
                "latent_re_attention=True is not implemented (the authors' released code applies "
                "no filter with it); use latent_re_attention=false"
            )
        if self.re_attn_t_start > self.re_attn_t_end:
            raise ValueError(
                f"re_attn_t_start {self.re_attn_t_start} is after re_attn_t_end "
                f"{self.re_attn_t_end}"
            )
        return self

    @property
    def enabled(self) -> bool:
        """SAFREE changes the prompt rows, it runs no concept branch in the UNet."""
        return False


def check_family(family: str, kinds: list[str]) -> None:
    """SAFREE's projection is written for one CLIP text encoder (SD 1.x, 2.x): refuse SDXL
    before a run starts, so a failed start writes nothing."""
    if family == "sdxl" and "safree" in kinds:
        raise AuditError("the safree config supports SD 1.x and 2.x models, not SDXL")


def concept_words(text: str) -> list[str]:
    """The concept words of a concept text: its comma-separated, non-blank pieces."""
    return [w.strip() for w in text.split(",") if w.strip()]


def projection_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """(d, d) orthogonal projection onto the span of the rows of `vectors` (k, d):
    E (E^T E)^+ E^T with E = vectors^T, in the order the paper writes it."""
    e = vectors.T
    return e @ torch.pinverse(e.T @ e) @ e.T


def trigger_tokens(masked: torch.Tensor, concept_proj: torch.Tensor, alpha: float) -> torch.Tensor:
    """Bool (n,): True for token i when masking it leaves the prompt at least (1 + alpha) times
    farther from the concept subspace than the mean over the other tokens' masks.

    `masked` (n, d) holds the pooled embeddings of the prompt with token i masked out. With one
    token the mean of the others is undefined (NaN) and the token counts as a trigger, as in the
    authors' code.
    """
    n, d = masked.shape
    away = torch.eye(d, dtype=masked.dtype, device=masked.device) - concept_proj
    dist = torch.linalg.vector_norm(away @ masked.T, dim=0)
    if n == 1:
        return torch.ones(1, dtype=torch.bool, device=masked.device)
    others = torch.stack([torch.cat([dist[:i], dist[i + 1 :]]).mean() for i in range(n)])
    return ~(dist < (1.0 + alpha) * others)


def project_tokens(
    embeds: torch.Tensor, masked: torch.Tensor, concept_proj: torch.Tensor
) -> torch.Tensor:
    """Every token embedding (L, d) projected onto the masked-prompt subspace and then away
    from the concept subspace: ((I - P_C) P_M e^T)^T."""
    d = embeds.shape[-1]
    away = torch.eye(d, dtype=embeds.dtype, device=embeds.device) - concept_proj
    return (away @ projection_matrix(masked) @ embeds.T).T


def safree_embeddings(
    embeds: torch.Tensor, masked: torch.Tensor, concept_proj: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings with the trigger tokens projected, all tokens projected), each (L, d).

    Token i of the prompt sits at position i + 1 (after the start token); the start, end and
    padding positions always keep their embeddings.
    """
    projected = project_tokens(embeds, masked, concept_proj)
    replace = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
    n = masked.shape[0]
    replace[1 : n + 1] = trigger_tokens(masked, concept_proj, alpha)[: embeds.shape[0] - 1]
    return torch.where(replace[:, None], projected, embeds), projected


def validation_steps(beta: float, up_t: int, category: str = "nudity") -> int:
    """The last step index that uses the projected prompt: round(up_t * sigmoid(2k(10 beta - t)))
    (Python's round, halves to even, as the authors' `f_beta`)."""
    mid, slope = _SIGMOID[category]
    x = 2.0 * slope * (10.0 * beta - mid)
    return round(up_t * (1.0 / (1.0 + math.exp(-x))))


def self_validation_beta(
    embeds: torch.Tensor, projected: torch.Tensor, real_tokens: torch.Tensor
) -> float:
    """1 - mean cosine similarity between each real token's embedding and its projection."""
    cos = F.cosine_similarity(projected[real_tokens], embeds[real_tokens])
    return 1.0 - cos.mean().item()


def projection_window(
    params: SafreeParams, embeds: torch.Tensor, projected: torch.Tensor, real_tokens: torch.Tensor
) -> tuple[int, int]:
    """(first, last) step index, inclusive, at which a prompt uses its projected embeddings."""
    if not params.self_validation_filter:
        return params.re_attn_t_start, params.re_attn_t_end
    beta = self_validation_beta(embeds, projected, real_tokens)
    return 0, validation_steps(beta, params.up_t, params.category)
