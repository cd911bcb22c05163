"""RECE concept erasure (Gong et al., ECCV 2024): UCE, then closed-form adversarial embeddings
erased in turn, as the authors' train.py (CharlesGong12/RECE) does.

Step 0 is our UCE edit (`analysis.erase.uce`, the concept's last word token mapped to its
target). Then each epoch, for every concept c (all 77 token rows of its text embedding):

1. the adversarial embedding under the current edited projections W_l, against the original
   W0_l (their `close_form_emb_regzero`, the `close_regzero` of their scripts):
       c' = argmin_x sum_l |W_l x - W0_l c|^2 + r |x|^2
          = c (inv(r I + sum_l W_l^T W_l) sum_l W_l^T W0_l)^T          (r = --regular-scale)
   i.e. the embedding that makes the erased model produce what the original produced for c;
2. a UCE-style edit of every W_l from its current value (their `edit_model_adversarial`):
       W' = (lamb W + s_e sum_i v_i^T c'_i + s_p sum_j (p_j W^T)^T p_j)
            @ inv(lamb I + s_e sum_i c'_i^T c'_i + s_p sum_j p_j^T p_j)
   with v_i = t_i W^T for the target's embedding t_i ('replace'), or that minus its component
   along c'_i W^T ('tensor'); p_j are the preserved texts' embeddings, the empty prompt once per
   concept when none is given (train.py's default retain texts).

The sums run in the authors' layer order (every to_v, then every to_k) so float32 rounds as
theirs does. No sampling: the same base and recipe give the same bits on one device. train.py
keeps the epoch whose validation images score lowest; that needs images and a classifier, so
here the last epoch is kept (--epochs chooses it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from analysis.erase import uce
from analysis.erase.output import check_finished, check_output, write_weights
from analysis.erase.uce import UceSettings, edited_layers, recipe_record, uce_edit
from analysis.errors import AuditError
from analysis.generation.models import LoadedModel
from analysis.store.weights import unet_sha256

SOURCE = (
    "CharlesGong12/RECE train.py, erase_methods/uce.py:edit_model_adversarial, "
    "utils/embedding_calculation/close_form_emb.py:close_form_emb_regzero"
)
SOURCE_COMMIT = "403a67fd86dce6c124b88798340e001e625b28c9"
#: train.py's retain text when --preserve_concepts is not given (one per concept)
EMPTY_RETAIN = " "


class ReceSettings(UceSettings):
    """UCE's options (train.py's defaults: lamb 0.1, preserve scale 0.1) plus RECE's own.

    regular_scale > 0 keeps the adversarial system invertible (train.py's --regular_scale).
    """

    preserve_scale: float = Field(0.1, ge=0)
    lamb: float = Field(0.1, gt=0)
    epochs: int = Field(3, ge=1)
    regular_scale: float = Field(0.1, gt=0)
    technique: Literal["replace", "tensor"] = "replace"

    def targets(self) -> list[str]:
        """Each concept's guided target (no prompt expansion: train.py edits the concepts)."""
        return self.pairs()[1][: len(self.concept)]

    def retain(self) -> list[str]:
        """The texts the adversarial edits keep: --preserve, else the empty prompt per concept."""
        return list(self.preserve) or [EMPTY_RETAIN] * len(self.concept)


def _their_order(names: list[str]) -> list[str]:
    """The authors' layer list: every attn2.to_v in module order, then every attn2.to_k."""
    return [n for n in names if ".to_v." in n] + [n for n in names if ".to_k." in n]


@torch.no_grad()
def sequence_embeddings(model: LoadedModel, texts: list[str]) -> dict[str, torch.Tensor]:
    """Each distinct text's full padded embedding (float32, [max_length, dim]), one per call."""
    from analysis.generation.conditioning import encode_text

    return {t: encode_text(model, [t])[0].float() for t in dict.fromkeys(texts)}


@torch.no_grad()
def adversarial_embedding(
    current: list[torch.Tensor],
    original: list[torch.Tensor],
    concept: torch.Tensor,
    regular_scale: float,
) -> torch.Tensor:
    """The closed-form adversarial embedding of `concept` ([tokens, dim]) under `current`
    projections vs `original` ones (same order): the ridge solution of step 1 above."""
    width = concept.shape[-1]
    gram = torch.eye(width, device=concept.device) * regular_scale
    cross = torch.zeros(width, width, device=concept.device)
    for w, w0 in zip(current, original, strict=True):
        gram = gram + w.T @ w
        cross = cross + w.T @ w0
    adv = concept @ (torch.inverse(gram) @ cross).T
    if not torch.isfinite(adv).all():
        raise AuditError(
            f"the RECE adversarial embedding is not finite (--regular-scale {regular_scale}): "
            "its matrix is singular in float32; raise --regular-scale"
        )
    return adv


@torch.no_grad()
def adversarial_edit(
    weight: torch.Tensor,
    adversarial: list[torch.Tensor],
    targets: list[torch.Tensor],
    retain: list[torch.Tensor],
    settings: ReceSettings,
) -> torch.Tensor:
    """One projection re-solved from its current value: the adversarial embeddings map where
    their targets do, the retained texts stay, lamb keeps it close (all token rows)."""
    width = weight.shape[1]
    left = settings.lamb * weight.clone()
    right = settings.lamb * torch.eye(width, device=weight.device)
    for adv, target in zip(adversarial, targets, strict=True):
        value = target @ weight.T
        if settings.technique == "tensor":  # drop the target's part along the concept's output
            u = adv @ weight.T
            u = u / u.norm()
            value = value - (u * value).sum() * u
        left += settings.erase_scale * _outer_sum(value, adv)
        right += settings.erase_scale * _outer_sum(adv, adv)
    for keep in retain:
        left += settings.preserve_scale * _outer_sum(keep @ weight.T, keep)
        right += settings.preserve_scale * _outer_sum(keep, keep)
    return left @ torch.inverse(right)


def _outer_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_t a_t b_t^T over token rows, as per-token outer products summed (the authors' way):
    the system is ill-conditioned (cond ~1e5 on 77 near-equal padding rows), so a plain a^T b,
    rounding differently, moves the solution by ~1e-3."""
    return (a[:, :, None] @ b[:, None, :]).sum(dim=0)


@torch.no_grad()
def rece_edit(
    model: LoadedModel, settings: ReceSettings, trace: list[dict[str, Any]] | None = None
) -> dict[str, torch.Tensor]:
    """The edited to_k/to_v weights (CPU) under diffusers UNet keys after UCE and `epochs`
    adversarial rounds; the model is left unchanged. `trace`, if given, receives each epoch's
    adversarial embeddings and the weights they were computed under (for tests)."""
    base = {f"{n}.weight": layer.weight.float() for n, layer in edited_layers(model.unet)}
    order = _their_order(list(base))
    current = {k: v.to(base[k].device).float() for k, v in uce_edit(model, settings).items()}
    targets, retain = settings.targets(), settings.retain()
    emb = sequence_embeddings(model, [*settings.concept, *targets, *retain])
    for epoch in range(settings.epochs):
        adversarial = [
            adversarial_embedding(
                [current[k] for k in order],
                [base[k] for k in order],
                emb[c],
                settings.regular_scale,
            )
            for c in settings.concept
        ]
        if trace is not None:
            trace.append({"epoch": epoch, "weights": dict(current), "adversarial": adversarial})
        updated = {}
        for name in order:
            new = adversarial_edit(
                current[name],
                adversarial,
                [emb[t] for t in targets],
                [emb[r] for r in retain],
                settings,
            )
            if not torch.isfinite(new).all():
                raise AuditError(
                    f"RECE epoch {epoch + 1} edit of {name} is not finite (--lamb "
                    f"{settings.lamb}): the matrix to invert is singular in float32; raise --lamb"
                )
            updated[name] = new
        current = updated
    dtype = dict(model.unet.named_parameters())
    return {k: current[k].to(dtype[k].dtype).cpu().contiguous() for k in base}


def rece_record(model: LoadedModel, settings: ReceSettings, base_sha256: str) -> dict[str, Any]:
    """UCE's record of the first step, plus RECE's own parameters and source."""
    record = recipe_record(model, settings, base_sha256)
    record.update(
        {
            "method_family": "rece",
            "epochs": settings.epochs,
            "regular_scale": settings.regular_scale,
            "technique": settings.technique,
            "emb_computing": "close_regzero",
            "adversarial_targets": settings.targets(),
            "adversarial_retain": settings.retain(),
            "token": "UCE step: last word token (attention_mask.sum() - 2); "
            "adversarial epochs: every token position",
            "epoch_kept": "last",
            "recipe_source": SOURCE,
            "recipe_source_commit": SOURCE_COMMIT,
            "uce_source": uce.SOURCE,
            "uce_source_commit": uce.SOURCE_COMMIT,
        }
    )
    return record


def train_rece(model: LoadedModel, settings: ReceSettings, out: Path) -> dict[str, Any]:
    """Edit `model` with RECE and write the edited tensors to `out`; returns the recipe.

    As `erase_uce`: this recipe's finished file is kept (`skipped`), another's refused, and
    nothing is written before every check has passed.
    """
    if model.dtype != torch.float32:
        raise AuditError(
            f"RECE edits float32 weights; load the model as float32 (got {model.dtype})"
        )
    if getattr(model, "family", "sd1") == "sdxl":
        raise AuditError("RECE here edits SD 1.x/2.x UNets (one text encoder); this model is SDXL")
    prov = model.provenance
    out = check_output(out, [prov.get("path"), (prov.get("unet") or {}).get("path")])
    record = rece_record(model, settings, unet_sha256(model.unet))
    if check_finished(out, record):
        return {**record, "skipped": True}
    started = time.perf_counter()
    tensors = rece_edit(model, settings)
    write_weights(out, tensors, record)
    return {**record, "skipped": False, "seconds": round(time.perf_counter() - started, 3)}
