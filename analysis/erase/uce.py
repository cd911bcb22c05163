"""UCE concept erasure (Gandikota et al., WACV 2024): a closed-form edit of cross-attention.

Every cross-attention key and value projection W (attn2.to_k, attn2.to_v) is replaced by the
least-squares solution of eq. 7 of the paper, as the authors' trainscripts/uce_sd_erase.py
computes it:

    W' = (lamb W + s_e sum_i (W g_i) c_i^T + s_p sum_j (W p_j) p_j^T)
         @ inv(lamb I + s_e sum_i c_i c_i^T + s_p sum_j p_j p_j^T)

c_i is the text embedding of the i-th concept to erase, g_i that of its guided target (the empty
prompt by default), p_j that of a concept to preserve; each is the encoder's output at the
prompt's last word token (the script's `attention_mask.sum() - 2`; the start token for ""). So
the edited layer maps c_i where the original mapped g_i and keeps p_j, while lamb keeps W close.
No sampling, no randomness: the same base and recipe give the same bits on one device.

Only the edited tensors are written, under diffusers UNet keys, with the recipe in the
safetensors metadata, exactly as `erase esd` does (`analysis.erase.output`).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from analysis.erase.output import base_source, check_finished, check_output, write_weights
from analysis.errors import AuditError
from analysis.generation.models import LoadedModel
from analysis.store.weights import unet_sha256

SOURCE = "rohitgandikota/unified-concept-editing trainscripts/uce_sd_erase.py"
SOURCE_COMMIT = "28c81ed5a3e41277c1a0dc55f738e7ab188e9718"
EDITED = ("attn2.to_k", "attn2.to_v")
#: the script's --expand_prompts templates, by its --concept_type
EXPANSIONS: dict[str, tuple[str, ...]] = {
    "art": ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"),
}


def _texts(values: list[str], what: str) -> list[str]:
    """Stripped, as the script strips each ';'-separated entry; a blank one is refused."""
    out = [v.strip() for v in values]
    if any(not v for v in out):
        raise ValueError(f"a {what} is blank")
    return out


class UceSettings(BaseModel):
    """What to erase, towards what, what to keep, and how hard; the authors' defaults.

    Fields are named as the CLI options. A concept both erased and preserved would pull the
    same row two ways, so it is refused; lamb > 0 keeps the matrix inverted invertible.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    concept: list[str]
    guided_concept: list[str] = Field(default_factory=list)
    preserve: list[str] = Field(default_factory=list)
    erase_scale: float = Field(1.0, gt=0)
    preserve_scale: float = Field(1.0, ge=0)
    lamb: float = Field(0.5, gt=0)
    expand_prompts: Literal["none", "art", "object"] = "none"

    @field_validator("concept")
    @classmethod
    def _concepts(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("is missing: give at least one --concept or a --concepts-file")
        return _texts(value, "concept to erase")

    @field_validator("guided_concept")
    @classmethod
    def _guides(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """None: the empty prompt for each concept; one: for every concept; else one each."""
        value = [v.strip() for v in value]
        n = len(info.data.get("concept") or [])
        if len(value) > 1 and n and len(value) != n:
            raise ValueError(f"gives {len(value)} targets for {n} concepts; give 1 or one each")
        return value

    @field_validator("preserve")
    @classmethod
    def _preserve(cls, value: list[str], info: ValidationInfo) -> list[str]:
        value = _texts(value, "concept to preserve")
        both = sorted(set(value) & set(info.data.get("concept") or []))
        if both:
            raise ValueError(f"{both[0]!r} is both erased (--concept) and preserved")
        return value

    def pairs(self) -> tuple[list[str], list[str]]:
        """(prompts to erase, their guided targets), after --expand-prompts as the script does:
        the concepts first, then each concept's templates, paired with its target's."""
        guides = self.guided_concept or [""]
        if len(guides) == 1:
            guides = guides * len(self.concept)
        erase, guide = list(self.concept), list(guides)
        for c, g in zip(self.concept, guides, strict=True):
            for template in EXPANSIONS.get(self.expand_prompts, ()):
                erase.append(template.format(c))
                guide.append(template.format(g))
        return erase, guide


def edited_layers(unet: Any) -> list[tuple[str, torch.nn.Linear]]:
    """The cross-attention key/value projections, in module order (the script's selection)."""
    return [
        (name, module)
        for name, module in unet.named_modules()
        if "attn2" in name and name.endswith((".to_k", ".to_v"))
    ]


@torch.no_grad()
def last_token_embeddings(model: LoadedModel, texts: list[str]) -> dict[str, torch.Tensor]:
    """Each distinct text's embedding at its last word token (float32, shape [dim]).

    One prompt per encoder call, as the script encodes them, so an embedding does not depend on
    which other concepts are edited.
    """
    from analysis.generation.conditioning import encode_text

    out: dict[str, torch.Tensor] = {}
    for text in dict.fromkeys(texts):
        mask = model.tokenizer(
            text,
            padding="max_length",
            max_length=model.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )["attention_mask"]
        index = int(mask.sum()) - 2
        out[text] = encode_text(model, [text])[0, index].float()
    return out


@torch.no_grad()
def uce_edit(model: LoadedModel, settings: UceSettings) -> dict[str, torch.Tensor]:
    """The edited to_k/to_v weights (CPU, float32) under diffusers UNet keys; the model is
    left unchanged. Each layer is solved from its original weights alone (eq. 7)."""
    if getattr(model, "family", "sd1") == "sdxl":
        raise AuditError("UCE here edits SD 1.x/2.x UNets (one text encoder); this model is SDXL")
    erase, guide = settings.pairs()
    emb = last_token_embeddings(model, [*erase, *guide, *settings.preserve])

    def rows(texts: list[str], width: int) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, width, device=model.device)
        return torch.stack([emb[t] for t in texts])

    edited: dict[str, torch.Tensor] = {}
    for name, layer in edited_layers(model.unet):
        w = layer.weight.float()
        width = w.shape[1]
        c, g, p = rows(erase, width), rows(guide, width), rows(settings.preserve, width)
        left = settings.lamb * w.clone()
        right = settings.lamb * torch.eye(width, device=w.device)
        # one term at a time, in the script's order, so the float32 sums round as its do
        for i in range(len(c)):
            left += settings.erase_scale * torch.outer(g[i] @ w.T, c[i])
            right += settings.erase_scale * torch.outer(c[i], c[i])
        for j in range(len(p)):
            left += settings.preserve_scale * torch.outer(p[j] @ w.T, p[j])
            right += settings.preserve_scale * torch.outer(p[j], p[j])
        new = left @ torch.inverse(right)
        if not torch.isfinite(new).all():
            raise AuditError(
                f"UCE edit of {name} is not finite (--lamb {settings.lamb}, --erase-scale "
                f"{settings.erase_scale}, --preserve-scale {settings.preserve_scale}): the matrix "
                "to invert is singular in float32; raise --lamb"
            )
        edited[f"{name}.weight"] = new.to(layer.weight.dtype).cpu().contiguous()
    return edited


def recipe_record(model: LoadedModel, settings: UceSettings, base_sha256: str) -> dict[str, Any]:
    """What the output file records: enough to name, reproduce and trace the edited model."""
    import diffusers

    import analysis

    prov = model.provenance
    base = base_source(prov)
    erase, guide = settings.pairs()
    return {
        "method_family": "uce",
        "concepts": list(settings.concept),
        "guided_concepts": guide[: len(settings.concept)],
        "preserve": list(settings.preserve),
        "expand_prompts": settings.expand_prompts,
        "erased_prompts": len(erase),
        "erase_scale": settings.erase_scale,
        "preserve_scale": settings.preserve_scale,
        "lamb": settings.lamb,
        "edited_params": ", ".join(EDITED),
        "edited_tensors": len(edited_layers(model.unet)),
        "token": "last word token (attention_mask.sum() - 2)",
        "recipe_source": SOURCE,
        "recipe_source_commit": SOURCE_COMMIT,
        "base_model": prov.get("spec"),
        "base_model_source": base,
        "base_unet_sha256": base_sha256,
        "device": str(model.device),
        "toolkit_version": analysis.__version__,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
    }


def erase_uce(model: LoadedModel, settings: UceSettings, out: Path) -> dict[str, Any]:
    """Edit `model` with UCE and write the edited tensors to `out`; returns the recorded recipe.

    An `out` that is already this recipe's finished file is kept (`skipped`); another recipe's
    or a foreign file is refused; nothing is written before every check has passed.
    """
    if model.dtype != torch.float32:
        raise AuditError(
            f"UCE edits float32 weights; load the model as float32 (got {model.dtype})"
        )
    prov = model.provenance
    out = check_output(out, [prov.get("path"), (prov.get("unet") or {}).get("path")])
    record = recipe_record(model, settings, unet_sha256(model.unet))
    if check_finished(out, record):
        return {**record, "skipped": True}
    started = time.perf_counter()
    tensors = uce_edit(model, settings)
    write_weights(out, tensors, record)
    return {**record, "skipped": False, "seconds": round(time.perf_counter() - started, 3)}


def read_concepts(path: Path, option: str) -> list[str]:
    """Concepts from a list file: .txt (one per line; blank lines and '#' lines skipped) or
    .csv (a 'concept' column). Anything else, or a file that is not UTF-8 text, is refused."""
    path = Path(path)
    if path.suffix.lower() not in (".txt", ".csv"):
        raise AuditError(f"{option} {path}: unknown list format {path.suffix!r}; use .txt or .csv")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuditError(f"{option} {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise AuditError(f"{option} {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise AuditError(f"{option} {path} is not readable ({exc.strerror})") from None
    if "\x00" in text:
        raise AuditError(f"{option} {path} is not text (it holds NUL bytes)")
    if path.suffix.lower() == ".txt":
        lines = (line.strip() for line in text.splitlines())
        concepts = [line for line in lines if line and not line.startswith("#")]
    else:
        reader = csv.DictReader(io.StringIO(text))
        if "concept" not in (reader.fieldnames or []):
            raise AuditError(f"{option} {path} has no 'concept' column ({reader.fieldnames})")
        concepts = [(row.get("concept") or "").strip() for row in reader]
        blank = next((i for i, c in enumerate(concepts, start=2) if not c), None)
        if blank is not None:
            raise AuditError(f"{option} {path}: line {blank} has a blank concept")
    if not concepts:
        raise AuditError(f"{option} {path} lists no concepts")
    return concepts
