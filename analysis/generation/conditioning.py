"""Text conditioning per family: the UNet inputs for [unconditional | prompt | safety concept].

SD 1.x and 2.x: one CLIP text encoder's last hidden state (SD 2's config already stops at the
penultimate OpenCLIP layer). SDXL: the penultimate hidden states of both encoders concatenated,
the second encoder's pooled output and the added time ids, exactly as diffusers'
`StableDiffusionXLPipeline.encode_prompt`; the safety concept is encoded like a prompt, and the
empty unconditional text becomes zeros when the model says `force_zeros_for_empty_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from analysis.errors import AuditError
from analysis.generation.models import LoadedModel
from analysis.guidance.safree import (
    SafreeParams,
    check_family,
    concept_words,
    projection_matrix,
    projection_window,
    safree_embeddings,
)


@dataclass(frozen=True)
class Conditioning:
    """UNet inputs for all guidance branches, rows ordered branch by branch (B rows each)."""

    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None = None  # SDXL's added_cond_kwargs


def token_ids(tokenizer: Any, texts: list[str], cut: str = "eos") -> torch.Tensor:
    """Ids padded to the tokenizer's max length; longer texts are cut as the reference did.

    "eos" (SD's pipelines) truncates and ends with the end token; "slice" (diffusers' semantic
    pipeline, which produced the published SEGA numbers) keeps the first max-length ids as they
    are, with no end token.
    """
    length = tokenizer.model_max_length
    ids = tokenizer(
        texts, padding="max_length", max_length=length, truncation=cut == "eos"
    ).input_ids
    # cut row by row: under "slice" long texts of different lengths would not stack
    return torch.tensor([row[:length] for row in ids])


def encode_text(model: LoadedModel, texts: list[str], cut: str = "eos") -> torch.Tensor:
    """CLIP text embeddings, padded/cut to the tokenizer's max length (as diffusers does)."""
    ids = token_ids(model.tokenizer, texts, cut)
    return model.text_encoder(ids.to(model.device))[0].to(model.dtype)


def encode_text_xl(
    model: LoadedModel, texts: list[str], cut: str = "eos"
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: (penultimate hidden states of both encoders, concatenated; pooled of the second)."""
    hidden = []
    for tokenizer, encoder in (
        (model.tokenizer, model.text_encoder),
        (model.tokenizer_2, model.text_encoder_2),
    ):
        ids = token_ids(tokenizer, texts, cut)
        out = encoder(ids.to(model.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    pooled = out[0]  # CLIPTextModelWithProjection's text_embeds
    return torch.cat(hidden, dim=-1).to(model.dtype), pooled.to(model.dtype)


def _sd(
    model: LoadedModel,
    prompts: list[str],
    uncond: str | None,
    concept: str | None,
    size: tuple,
    cut: str = "eos",
) -> Conditioning:
    rows = [encode_text(model, prompts, cut)]
    n = len(prompts)
    if uncond is not None:
        rows.insert(0, encode_text(model, [uncond], cut).expand(n, -1, -1))
    if concept is not None:
        rows.append(encode_text(model, [concept], cut).expand(n, -1, -1))
    return Conditioning(torch.cat(rows))


def time_ids(model: LoadedModel, height: int, width: int) -> torch.Tensor:
    """SDXL's added time ids: original size, crop top-left (0, 0), target size (as diffusers)."""
    ids = [height, width, 0, 0, height, width]
    expected = model.unet.add_embedding.linear_1.in_features
    passed = model.unet.config.addition_time_embed_dim * len(ids)
    passed += model.text_encoder_2.config.projection_dim
    if expected != passed:
        raise AuditError(
            f"this SDXL UNet expects added embeddings of length {expected}, its text encoder 2 "
            f"and time ids give {passed}: the model's configs do not belong together"
        )
    return torch.tensor([ids], dtype=model.dtype, device=model.device)


def _sdxl(
    model: LoadedModel,
    prompts: list[str],
    uncond: str | None,
    concept: str | None,
    size: tuple,
    cut: str = "eos",
) -> Conditioning:
    # Fixed texts are encoded as B copies: the pooled projection's last bits depend on the call
    # shape, and four Euler steps turned 2e-7 there into 2e-5 in the latents.
    n = len(prompts)
    hidden, pooled = encode_text_xl(model, prompts, cut)
    rows, pools = [hidden], [pooled]
    if uncond is not None:
        if uncond == "" and model.force_zeros_for_empty_prompt:
            h, p = torch.zeros_like(hidden), torch.zeros_like(pooled)
        else:
            h, p = encode_text_xl(model, [uncond] * n, cut)
        rows.insert(0, h)
        pools.insert(0, p)
    if concept is not None:
        h, p = encode_text_xl(model, [concept] * n, cut)
        rows.append(h)
        pools.append(p)
    ids = time_ids(model, *size).repeat(n * len(rows), 1)
    return Conditioning(torch.cat(rows), {"text_embeds": torch.cat(pools), "time_ids": ids})


ENCODERS = {"sd1": _sd, "sd2": _sd, "sdxl": _sdxl}


def condition(
    model: LoadedModel,
    prompts: list[str],
    uncond: str | None,
    concept: str | None,
    size: tuple[int, int],
    cut: str = "eos",
) -> Conditioning:
    """Conditioning for [uncond (if not None) | prompts | concept (if not None)] at (h, w);
    `cut` says how texts over the tokenizer's length are cut (`token_ids`)."""
    return ENCODERS[model.family](model, prompts, uncond, concept, size, cut)


@dataclass(frozen=True)
class SafreeSwap:
    """SAFREE's per-step choice between each prompt row's plain and projected embeddings."""

    embeds: torch.Tensor  # the plain conditioning, [uncond | prompts]
    projected: torch.Tensor  # the same with each prompt row's trigger tokens projected
    windows: list[tuple[int, int]]  # per prompt row, the steps (inclusive) using the projection
    first_row: int  # index of the first prompt row in `embeds`

    def embeds_at(self, step: int) -> torch.Tensor:
        """The UNet's text conditioning at `step`: rows chosen one by one (batch-independent)."""
        rows = torch.zeros(self.embeds.shape[0], dtype=torch.bool, device=self.embeds.device)
        for k, (first, last) in enumerate(self.windows):
            rows[self.first_row + k] = first <= step <= last
        return torch.where(rows[:, None, None], self.projected, self.embeds)


def _pooled(model: LoadedModel, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = model.text_encoder(ids.to(model.device), attention_mask=mask)
    return out.pooler_output.float()


def safree_swap(
    model: LoadedModel, prompts: list[str], cond: Conditioning, concept: str, params: SafreeParams
) -> SafreeSwap:
    """SAFREE's projected prompt rows for `cond` ([uncond | prompts]), computed prompt by prompt.

    As the authors' pipeline: the concept words' pooled embeddings (padded to the max length,
    with their attention mask); per prompt, the pooled embeddings of the prompt (unpadded, cut
    at the max length) with each token in turn replaced by id 0; the projection in float32.
    """
    check_family(model.family, ["safree"])
    tok = model.tokenizer
    length = tok.model_max_length
    words = tok(
        concept_words(concept),
        padding="max_length",
        max_length=length,
        truncation=True,
        return_tensors="pt",
    )
    concept_proj = projection_matrix(
        _pooled(model, words.input_ids, words.attention_mask.to(model.device))
    )
    first_row = cond.embeds.shape[0] - len(prompts)
    projected = cond.embeds.clone()
    windows: list[tuple[int, int]] = []
    done: dict[str, tuple[torch.Tensor, tuple[int, int]]] = {}
    for k, prompt in enumerate(prompts):
        if prompt not in done:
            embeds = cond.embeds[first_row + k].float()
            ids = tok([prompt], padding="longest", return_tensors="pt").input_ids[:, :length]
            n = min(ids.shape[1] - 2, length - 2)
            real = (
                tok(
                    [prompt],
                    padding="max_length",
                    max_length=length,
                    truncation=True,
                    return_tensors="pt",
                )
                .attention_mask[0]
                .bool()
                .to(embeds.device)
            )
            if n < 1:  # nothing to mask: the prompt stays as it is
                done[prompt] = (embeds, (0, -1))
            else:
                masked_ids = ids.repeat(n, 1)
                masked_ids[torch.arange(n), torch.arange(n) + 1] = 0
                masked = _pooled(model, masked_ids, None)
                merged, full = safree_embeddings(embeds, masked, concept_proj, params.alpha)
                done[prompt] = (merged, projection_window(params, embeds, full, real))
        merged, window = done[prompt]
        projected[first_row + k] = merged.to(projected.dtype)
        windows.append(window)
    return SafreeSwap(cond.embeds, projected, windows, first_row)
