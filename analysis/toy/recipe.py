"""The toy model's training recipe as a record (no torch: the CLI reads its defaults for --help)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from analysis.toy.world import WorldSpec


class Recipe(BaseModel):
    """Everything that decides the trained weights (with the world version and the seed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0)
    per_country: int = Field(160, ge=1)
    concept_items: int = Field(1000, ge=1)
    per_harmless: int = Field(300, ge=1)
    vae_steps: int = Field(500, ge=1)
    vae_batch: int = Field(32, ge=1)
    vae_lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    text_steps: int = Field(300, ge=0)
    text_lr: float = Field(3e-3, gt=0)
    unet_steps: int = Field(2000, ge=1)
    batch: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(100, ge=0)
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    threads: int = Field(1, ge=1)

    def world(self) -> WorldSpec:
        from analysis.toy.world import WorldSpec

        return WorldSpec(self.per_country, self.concept_items, self.per_harmless, self.seed)
