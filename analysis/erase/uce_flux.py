"""UCE for FLUX (Gandikota et al.): the closed-form edit of the layers that take in text.

FLUX has no cross-attention whose keys/values read the prompt alone: its joint blocks attend
over [text | image] tokens after `context_embedder` has projected T5's states into the
transformer's width, and the pooled CLIP vector enters through `time_text_embed.text_embedder.
linear_1`. The authors' trainscripts/uce_flux_edit.py edits exactly those two projections, with
the same eq. 7 as for SD (see `analysis.erase.uce`):

    W' = (lamb W + s_e sum_i v(g_i) c_i^T + s_p sum_j v(p_j) p_j^T)
         @ inv(lamb I + s_e sum_i c_i c_i^T + s_p sum_j p_j p_j^T)

- c is T5's state at the prompt's last word token (`attention_mask.sum() - 2`; for "" that is
  -1, the last padding position, as the script indexes) for `context_embedder`, and CLIP's
  pooled output for `text_embedder.linear_1`. The script picks the pooled one by the layer's
  width 768 (FLUX.1's CLIP-L); here by the layer's name, which agrees on FLUX.1 and also holds
  for models of other widths (the tiny ones).
- v(x) is the original layer's output, bias included (the script calls the module), so the
  edited layer maps c_i to W g_i + 2b: recorded, as the authors' edit does it.
- T5 is padded to 256 tokens for schnell-like models (no guidance embedding), else 512, as the
  script's __main__ (it tests 'schnell' in the model id), capped at the tokenizer's length.

SD3 is not covered by the authors' scripts (FLUX and HiDream only), so it is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from analysis.erase.output import base_source, check_finished, check_output, write_weights
from analysis.erase.uce import SOURCE_COMMIT, UceSettings
from analysis.errors import AuditError
from analysis.store.weights import unet_sha256

SOURCE = "rohitgandikota/unified-concept-editing trainscripts/uce_flux_edit.py"
#: the script's selection: any module whose name contains one of these
SELECTED = ("context_embedder", "text_embedder.linear_1")
#: the script's T5 lengths: schnell (no guidance embedding) 256, dev 512
T5_LENGTHS = {"schnell": 256, "dev": 512}


def check_family(model: Any) -> None:
    """UCE on flow models exists only as the authors' FLUX edit; SD3 is refused, one line."""
    family = getattr(model, "family", None)
    if family != "flux":
        name = model.provenance.get("spec", family) if hasattr(model, "provenance") else family
        raise AuditError(
            f"UCE for {name} ({family}) is not implemented: the authors' scripts edit SD 1.x/2.x "
            "UNets and FLUX (uce_flux_edit.py), not SD3"
        )


def edited_layers(transformer: Any) -> list[tuple[str, torch.nn.Linear]]:
    """The text-input projections the script edits, in module order."""
    return [
        (name, module)
        for name, module in transformer.named_modules()
        if any(key in name for key in SELECTED)
    ]


def t5_length(model: Any) -> int:
    """The script's max_sequence_length for this model, capped at the T5 tokenizer's."""
    kind = "dev" if model.transformer.config.guidance_embeds else "schnell"
    return min(T5_LENGTHS[kind], int(model.tokenizer_2.model_max_length))


@torch.no_grad()
def flux_embeddings(model: Any, texts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each distinct text's (T5 state at its last word token, CLIP pooled), float32, one text
    per encoder call as the script encodes them (FluxPipeline.encode_prompt's steps)."""
    length = t5_length(model)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for text in dict.fromkeys(texts):
        clip_ids = model.tokenizer(
            [text],
            padding="max_length",
            max_length=model.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = model.text_encoder(clip_ids.to(model.device), output_hidden_states=False)
        t5_tokens = model.tokenizer_2(
            [text], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        states = model.text_encoder_2(t5_tokens.input_ids.to(model.device))[0]
        index = int(t5_tokens.attention_mask.sum()) - 2
        out[text] = (states[0, index].float(), pooled.pooler_output[0].float())
    return out


@torch.no_grad()
def uce_flux_edit(model: Any, settings: UceSettings) -> dict[str, torch.Tensor]:
    """The edited weights (CPU, float32) under diffusers transformer keys; the model is left
    unchanged. Each layer is solved from its original weights alone (eq. 7)."""
    check_family(model)
    erase, guide = settings.pairs()
    emb = flux_embeddings(model, [*erase, *guide, *settings.preserve])
    edited: dict[str, torch.Tensor] = {}
    for name, layer in edited_layers(model.transformer):
        slot = 1 if "text_embedder.linear_1" in name else 0  # pooled CLIP, else T5's token
        w = layer.weight.float()
        left = settings.lamb * w.clone()
        right = settings.lamb * torch.eye(w.shape[1], device=w.device)
        terms = [(settings.erase_scale, c, g) for c, g in zip(erase, guide, strict=True)]
        terms += [(settings.preserve_scale, p, p) for p in settings.preserve]
        for scale, source, target in terms:  # in the script's order: float32 sums round alike
            c = emb[source][slot]
            v = layer(emb[target][slot][None].to(layer.weight.dtype))[0].float()
            left += scale * torch.outer(v, c)
            right += scale * torch.outer(c, c)
        new = left @ torch.inverse(right)
        if not torch.isfinite(new).all():
            raise AuditError(
                f"UCE edit of {name} is not finite (--lamb {settings.lamb}): the matrix to "
                "invert is singular in float32; raise --lamb"
            )
        edited[f"{name}.weight"] = new.to(layer.weight.dtype).cpu().contiguous()
    return edited


def recipe_record(model: Any, settings: UceSettings, base_sha256: str) -> dict[str, Any]:
    """What the output file records: enough to name, reproduce and trace the edited model."""
    import diffusers

    import analysis

    prov = model.provenance
    erase, guide = settings.pairs()
    layers = edited_layers(model.transformer)
    return {
        "method_family": "uce",
        "family": "flux",
        "concepts": list(settings.concept),
        "guided_concepts": guide[: len(settings.concept)],
        "preserve": list(settings.preserve),
        "expand_prompts": settings.expand_prompts,
        "erased_prompts": len(erase),
        "erase_scale": settings.erase_scale,
        "preserve_scale": settings.preserve_scale,
        "lamb": settings.lamb,
        "edited_params": ", ".join(name for name, _ in layers),
        "edited_tensors": len(layers),
        "token": "T5 at attention_mask.sum() - 2 (context_embedder); CLIP pooled (text_embedder)",
        "t5_length": t5_length(model),
        "targets": "original layer output, bias included (the script's module(c))",
        "recipe_source": SOURCE,
        "recipe_source_commit": SOURCE_COMMIT,
        "base_model": prov.get("spec"),
        "base_model_source": base_source(prov),
        "base_transformer_sha256": base_sha256,
        "device": str(model.device),
        "toolkit_version": analysis.__version__,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
    }


def erase_uce_flux(model: Any, settings: UceSettings, out: Path) -> dict[str, Any]:
    """Edit a FLUX model with UCE and write the edited tensors to `out` (`--unet` loads them
    over the same base); a finished file of this recipe is kept, any other refused."""
    check_family(model)
    if model.dtype != torch.float32:
        raise AuditError(
            f"UCE edits float32 weights; load the model as float32 (got {model.dtype})"
        )
    out = check_output(out, [model.provenance.get("path")])
    record = recipe_record(model, settings, unet_sha256(model.transformer))
    if check_finished(out, record):
        return {**record, "skipped": True}
    started = time.perf_counter()
    tensors = uce_flux_edit(model, settings)
    write_weights(out, tensors, record)
    return {**record, "skipped": False, "seconds": round(time.perf_counter() - started, 3)}
