"""ESD training recipes and validated settings.

The ESD authors published two procedures that differ in more than their defaults, so each is a
named recipe and the one that ran is recorded in the output file:

- `paper` (train-scripts/train-esd.py, ICCV 2023): z_t is sampled with the model being trained;
  1000 iterations, lr 1e-5, eta 1; DDIM step k ~ U{0..S-1}, z_t after the DDIM steps down to
  index k-1, queried at a DDPM timestep ~ U[1000k/S, 1000(k+1)/S); esd-u = 'noxattn' (every
  parameter except attn2, the time embedding and the output conv/norm).
- `diffusers` (esd_sd.py): z_t is sampled with the frozen base; 200 iterations, lr 5e-5, eta 2;
  r ~ U{0..S-1} DDIM steps, queried at the schedule's r-th timestep; esd-u = weights and biases
  of every Linear/Conv2d outside attn2 (norms stay frozen).

Both use CFG 3 for sampling, Adam, and the MSE loss to eps("") - eta * (eps(c) - eps("")).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Method = Literal["esd-x", "esd-u"]
RecipeName = Literal["paper", "diffusers"]
Precision = Literal["fp32", "bf16", "fp16"]


class Recipe(BaseModel):
    """One published ESD procedure: its defaults and how it draws z_t and picks parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RecipeName
    source: str
    iterations: int
    lr: float
    negative_guidance: float
    sample_with: Literal["trained", "frozen"]
    timesteps: Literal["paper", "diffusers"]
    esd_u_params: Literal["noxattn", "linear-conv"]


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        source="rohitgandikota/erasing train-scripts/train-esd.py",
        iterations=1000,
        lr=1e-5,
        negative_guidance=1.0,
        sample_with="trained",
        timesteps="paper",
        esd_u_params="noxattn",
    ),
    "diffusers": Recipe(
        name="diffusers",
        source="rohitgandikota/erasing esd_sd.py",
        iterations=200,
        lr=5e-5,
        negative_guidance=2.0,
        sample_with="frozen",
        timesteps="diffusers",
        esd_u_params="linear-conv",
    ),
}


class EsdSettings(BaseModel):
    """What to erase and how; None means 'the recipe's value'."""

    model_config = ConfigDict(extra="forbid")

    concept: str = Field(min_length=1)
    method: Method = "esd-x"
    recipe: RecipeName = "paper"
    iterations: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    negative_guidance: float | None = None
    start_guidance: float = Field(3.0, ge=0)
    ddim_steps: int = Field(50, ge=2, le=1000)
    resolution: int | None = Field(None, ge=8)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False

    @field_validator("concept")
    @classmethod
    def _concept_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the concept to erase is empty")
        return value

    def resolved(self) -> dict[str, float | int]:
        """iterations, lr and eta after the recipe's defaults are applied."""
        recipe = RECIPES[self.recipe]
        return {
            "iterations": self.iterations if self.iterations is not None else recipe.iterations,
            "lr": self.lr if self.lr is not None else recipe.lr,
            "negative_guidance": (
                self.negative_guidance
                if self.negative_guidance is not None
                else recipe.negative_guidance
            ),
        }
