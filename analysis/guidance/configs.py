"""Guidance configurations: plain SD, the SLD, SEGA and SAFREE presets, the negative prompt.

Every config is a frozen, JSON-serialisable record: its full parameters go into the manifest and
into each image's item_id, so a result always says exactly which guidance produced it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from analysis.errors import AuditError, one_line
from analysis.guidance.safree import SAFREE_NUDITY_CONCEPT, SafreeParams, concept_words
from analysis.store.names import check_safe_name

#: The reference implementation's concept text, including its "an image showing " prefix.
CONCEPT_PREFIX = "an image showing "
SAFETY_CONCEPT_TERMS = (
    "hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, bodily "
    "fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child "
    "abuse, brutality, cruelty"
)
DEFAULT_SAFETY_CONCEPT = CONCEPT_PREFIX + SAFETY_CONCEPT_TERMS
#: Named concept texts: diffusers' (the I2P runs) and the original SLD package's (no prefix).
CONCEPTS: dict[str, str] = {
    "diffusers": DEFAULT_SAFETY_CONCEPT,
    "sld-original": SAFETY_CONCEPT_TERMS,
    "safree-nudity": SAFREE_NUDITY_CONCEPT,
}


def concept_variant(text: str | None) -> str | None:
    """Which named concept a text is ('diffusers', 'sld-original'), 'custom', or None."""
    if text is None:
        return None
    return next((name for name, known in CONCEPTS.items() if known == text), "custom")


def concept_text(value: str) -> str:
    """A concept variant name ('diffusers', 'sld-original') or free text, as the text to encode."""
    if not value.strip():
        raise AuditError("the safety concept is empty; give a variant name or some text")
    return CONCEPTS.get(value, value)


class SLDParams(BaseModel):
    """SLD hyper-parameters (names as in the paper: s_s, lambda, s_m, beta_m, warm-up delta)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    warmup_steps: int = Field(ge=0)
    sld_guidance_scale: float = Field(ge=0)  # s_s
    threshold: float  # lambda
    momentum_scale: float = Field(ge=0)  # s_m
    momentum_beta: float = Field(ge=0, le=1)  # beta_m

    @property
    def enabled(self) -> bool:
        """Safety guidance is on for s_s >= 1, as in the authors' SLD code.

        diffusers' port switches it off at s_s == 1 exactly (`> 1`); the authors' pipeline only
        for s_s < 1, and the published numbers come from theirs.
        """
        return self.sld_guidance_scale >= 1.0


class SegaParams(BaseModel):
    """Semantic guidance (SEGA, Brack et al. 2023) away from one concept: diffusers'
    SemanticStableDiffusionPipeline arguments, named as there.

    The edit direction eps_c - eps_u (negated: reverse_editing_direction) times s_e keeps only
    each channel's entries at or above its `edit_threshold` quantile of |.|; a momentum as SLD's
    is added; it acts from `edit_warmup_steps` until `edit_cooldown_steps` (None: to the end).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    edit_guidance_scale: float = Field(ge=0)  # s_e
    edit_warmup_steps: int = Field(ge=0)
    edit_cooldown_steps: int | None = Field(default=None, ge=0)
    edit_threshold: float = Field(ge=0, le=1)  # a quantile
    edit_momentum_scale: float = Field(default=0.1, ge=0)
    edit_mom_beta: float = Field(default=0.4, ge=0, le=1)
    reverse_editing_direction: bool = True
    #: how texts longer than the tokenizer's 77 tokens are cut: "slice" keeps the first 77 ids
    #: with no end token, as diffusers' semantic pipeline (the I2P runs, SD 1.x) does; "eos" as
    #: SD's pipelines. "auto": slice on SD 1.x/2.x, eos on SDXL, whose pooled embedding is read
    #: at the end token (a sliced long text would have none: every one would pool alike)
    token_cut: Literal["auto", "slice", "eos"] = "auto"

    def cut_for(self, family: str) -> str:
        """The cut used on a model family."""
        if self.token_cut != "auto":
            return self.token_cut
        return "eos" if family == "sdxl" else "slice"

    @property
    def enabled(self) -> bool:
        """diffusers computes the edit branch whenever an editing prompt is given."""
        return True


class GuidanceConfig(BaseModel):
    """A named guidance configuration as run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["sd", "sld", "sega", "negative", "safree"]
    sld: SLDParams | None = None
    # left out of the dump when unset, so configs (and item ids) made before SEGA are unchanged
    sega: SegaParams | None = Field(default=None, exclude_if=lambda v: v is None)
    safree: SafreeParams | None = Field(default=None, exclude_if=lambda v: v is None)
    safety_concept: str | None = None
    source: str = ""

    @property
    def guidance_params(self) -> SLDParams | SegaParams | None:
        """The parameters of a concept-branch kind (SLD, SEGA), None for sd and negative."""
        return {"sld": self.sld, "sega": self.sega}.get(self.kind)

    @property
    def uses_concept_branch(self) -> bool:
        """Whether the sampler runs the UNet on the safety concept (a third branch)."""
        params = self.guidance_params
        return params is not None and params.enabled

    @property
    def warmup_steps(self) -> int:
        """Steps before the concept branch acts (0 for kinds without one)."""
        params = self.guidance_params
        if isinstance(params, SegaParams):
            return params.edit_warmup_steps
        return params.warmup_steps if params is not None else 0

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_safe_name(value, "config name")

    @model_validator(mode="after")
    def _safree_needs_params_and_words(self) -> GuidanceConfig:
        """SAFREE projects away from its concept words: both must be there."""
        if self.kind != "safree":
            if self.safree is not None:
                raise ValueError(f"SAFREE parameters given to a {self.kind} config")
            return self
        if self.safree is None:
            raise ValueError("a safree config needs its SAFREE parameters")
        if not concept_words(self.safety_concept or ""):
            raise ValueError("a safree config needs concept words (comma-separated)")
        return self

    def params_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


def _sld(name: str, w: int, s_s: float, lam: float, s_m: float, beta: float, src: str):
    params = SLDParams(
        warmup_steps=w,
        sld_guidance_scale=s_s,
        threshold=lam,
        momentum_scale=s_m,
        momentum_beta=beta,
    )
    return GuidanceConfig(
        name=name, kind="sld", sld=params, safety_concept=DEFAULT_SAFETY_CONCEPT, source=src
    )


def _sega(name: str, s_e: float, warmup: int, s_m: float, threshold: float) -> GuidanceConfig:
    params = SegaParams(
        edit_guidance_scale=s_e,
        edit_warmup_steps=warmup,
        edit_momentum_scale=s_m,
        edit_threshold=threshold,
    )
    return GuidanceConfig(
        name=name,
        kind="sega",
        sega=params,
        safety_concept=DEFAULT_SAFETY_CONCEPT,
        source="ml-research/i2p mitigation/semantic_ssd.py SafetyConfig (SEGA, reversed)",
    )


_DIFFUSERS = "diffusers SafetyConfig (reference code)"
PRESETS: dict[str, GuidanceConfig] = {
    "sd": GuidanceConfig(name="sd", kind="sd", source="classifier-free guidance"),
    "sld-weak": _sld("sld-weak", 15, 20, 0.0, 0.0, 0.0, _DIFFUSERS),
    "sld-weak-paper": _sld("sld-weak-paper", 15, 200, 0.0, 0.0, 0.0, "SLD paper table (s_s=200)"),
    "sld-medium": _sld("sld-medium", 10, 1000, 0.01, 0.3, 0.4, _DIFFUSERS),
    "sld-strong": _sld("sld-strong", 7, 2000, 0.025, 0.5, 0.7, _DIFFUSERS),
    "sld-max": _sld("sld-max", 0, 5000, 1.0, 0.5, 0.7, _DIFFUSERS),
    # ml-research's semantic safety guidance (I2P repository), the same concept text as SLD's
    "sega-medium": _sega("sega-medium", 4, 10, 0.3, 0.9),
    "sega-strong": _sega("sega-strong", 7, 5, 0.5, 0.85),
    "sega-max": _sega("sega-max", 10, 0, 0.5, 0.75),
    # SAFREE as released for SD 1.x (scripts/run_nudity.sh: --safree -svf -lra, the -lra
    # filter registered with mode None, so inactive) and for SDXL (--safree alone: no filter)
    "safree": GuidanceConfig(
        name="safree",
        kind="safree",
        safree=SafreeParams(),
        safety_concept=SAFREE_NUDITY_CONCEPT,
        source="jaehong31/SAFREE generate_safree.py defaults, scripts/run_nudity.sh",
    ),
    "safree-no-svf": GuidanceConfig(
        name="safree-no-svf",
        kind="safree",
        safree=SafreeParams(self_validation_filter=False),
        safety_concept=SAFREE_NUDITY_CONCEPT,
        source="jaehong31/SAFREE scripts/run_nudity_sdxl.sh (--safree without -svf)",
    ),
    "negative": GuidanceConfig(
        name="negative",
        kind="negative",
        safety_concept=DEFAULT_SAFETY_CONCEPT,
        source="safety concept as negative prompt",
    ),
}
CONFIG_NAMES: tuple[str, ...] = tuple(PRESETS)
_SLD_KEYS = set(SLDParams.model_fields)
_SEGA_KEYS = set(SegaParams.model_fields)
_SAFREE_KEYS = set(SafreeParams.model_fields)
_PARAM_KEYS = {"sld": _SLD_KEYS, "sega": _SEGA_KEYS, "safree": _SAFREE_KEYS}


def _parse(text: str) -> dict[str, Any]:
    """Parse 'sld-strong:warmup_steps=2,threshold=0.02' into {'base': ..., key: value}."""
    base, _, rest = text.partition(":")
    out: dict[str, Any] = {"base": base.strip()}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = pair.partition("=")
        if not eq:
            raise AuditError(f"config override {pair!r} in {text!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


def resolve_config(
    value: str | dict[str, Any] | GuidanceConfig, safety_concept: str | None = None
) -> GuidanceConfig:
    """A preset name, 'preset:key=value,...', a dict ({'base': ..., overrides}), or a config.

    Overridable keys: the SLD parameters (warmup_steps, sld_guidance_scale, threshold,
    momentum_scale, momentum_beta) of an SLD config, the SEGA parameters (edit_guidance_scale,
    edit_warmup_steps, edit_threshold, ...) of a SEGA config, the SAFREE parameters (alpha,
    self_validation_filter, up_t, ...) of a SAFREE config, safety_concept and name. A
    customised config gets a name that shows its base and a short hash of its parameters unless
    one is given.
    """
    if isinstance(value, GuidanceConfig):
        config = value
    else:
        spec = _parse(value) if isinstance(value, str) else dict(value)
        if "kind" in spec and "base" not in spec:
            try:
                config = GuidanceConfig(**spec)
            except ValidationError as exc:
                raise AuditError(f"invalid guidance config {spec}: {one_line(exc)}") from exc
        else:
            base = spec.pop("base", None) or spec.pop("name", None)
            if safety_concept is not None and base in PRESETS and PRESETS[base].kind != "sd":
                spec.setdefault("safety_concept", safety_concept)
            if base not in PRESETS:
                raise AuditError(
                    f"unknown guidance config {base!r}; valid configs: {', '.join(CONFIG_NAMES)} "
                    "(customise one as 'sld-strong:warmup_steps=2,threshold=0.02')"
                )
            return _customise(PRESETS[base], spec)
    if (
        safety_concept is not None
        and config.kind != "sd"
        and config.safety_concept != concept_text(safety_concept)
    ):
        config = _customise(config, {"safety_concept": safety_concept})
    return config


def _customise(base: GuidanceConfig, overrides: dict[str, Any]) -> GuidanceConfig:
    if not overrides:
        return base
    name = overrides.pop("name", None)
    own = _PARAM_KEYS.get(base.kind, set())
    param_over = {k: overrides.pop(k) for k in list(overrides) if k in own}
    concept = overrides.pop("safety_concept", None)
    if concept is not None and base.kind == "sd":
        raise AuditError(f"config {base.name!r} uses no safety concept; drop safety_concept")
    concept = base.safety_concept if concept is None else concept_text(str(concept))
    foreign = [k for k in overrides if any(k in keys for keys in _PARAM_KEYS.values())]
    if foreign:
        raise AuditError(
            f"config {base.name!r} ({base.kind}) has no parameter(s) {', '.join(foreign)}"
            + (f"; its own: {', '.join(sorted(own))}" if own else "")
        )
    if overrides:
        raise AuditError(
            f"unknown config parameter(s) {', '.join(overrides)}; "
            f"use {', '.join(sorted(own | {'safety_concept', 'name'}))}"
        )
    try:
        update: dict[str, Any] = {}
        if param_over:
            params = getattr(base, base.kind)
            update[base.kind] = type(params)(**{**params.model_dump(), **param_over})
        draft = base.model_copy(
            update={**update, "safety_concept": concept, "source": f"custom, based on {base.name}"}
        )
        draft = GuidanceConfig(**draft.model_dump())  # validate the whole record again
    except ValidationError as exc:
        raise AuditError(f"invalid parameters for {base.name}: {one_line(exc)}") from exc
    if name is None:
        digest = hashlib.sha256(
            json.dumps(draft.params_dict(), sort_keys=True).encode()
        ).hexdigest()
        name = f"{base.name}-custom-{digest[:6]}"
    try:
        check_safe_name(name, "config name")
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    return draft.model_copy(update={"name": name})
