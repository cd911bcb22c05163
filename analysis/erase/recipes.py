"""ESD training recipes and validated settings.

The ESD authors published two procedures that differ in more than their defaults, so each is a
named recipe and the one that ran is recorded in the output file:

- `paper` (train-scripts/train-esd.py, ICCV 2023): z_t is sampled with the model being trained
  (ldm's DDIM, eta 0); 1000 iterations, lr 1e-5, eta 1; DDIM step k ~ U{0..S-1}, z_t after the
  DDIM steps down to index k-1, queried at a DDPM timestep ~ U[1000k/S, 1000(k+1)/S); target
  eps("") - eta * (eps(c) - eps("")); esd-u = 'noxattn' (every parameter except attn2, the time
  embedding and the output conv/norm).
- `diffusers` (esd_sd.py): z_t is sampled with the frozen base by SD 1.4's own scheduler, PNDM
  with skip_prk_steps (PLMS), whose S-step list repeats its second timestep (S=50: 981, 961,
  961, 941, ..., 1); r ~ U{0..S-1}, z_t after timesteps[:r], queried at timesteps[r]; 200
  iterations, lr 5e-5, eta 2; target eps(c) - eta * (eps(c) - eps("")) (the script's
  `erase_from - eta * (erase - null)`, so its eta 2 pulls as far as the paper's eta 1);
  esd-u = weights and biases of every Linear/Conv2d outside attn2 (norms stay frozen).

Both sample z_t with CFG 3 and train with Adam on the MSE loss. Where `diffusers` still differs
from esd_sd.py, `Recipe.differences` says so and the output file records it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Method = Literal["esd-x", "esd-u"]
RecipeName = Literal["paper", "diffusers"]
Precision = Literal["fp32", "bf16", "fp16"]


class Recipe(BaseModel):
    """One published ESD procedure: its defaults and how it draws z_t and picks parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: RecipeName
    source: str
    iterations: int = Field(ge=1)
    lr: float = Field(gt=0)
    negative_guidance: float = Field(ge=0)
    sample_with: Literal["trained", "frozen"]
    timesteps: Literal["paper", "diffusers"]
    sampler: Literal["ddim", "pndm"]
    target: Literal["uncond", "concept"]  # the anchor a: a - eta * (eps(c) - eps(""))
    esd_u_params: Literal["noxattn", "linear-conv"]
    differences: tuple[str, ...] = ()


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        source="rohitgandikota/erasing train-scripts/train-esd.py",
        iterations=1000,
        lr=1e-5,
        negative_guidance=1.0,
        sample_with="trained",
        timesteps="paper",
        sampler="ddim",
        target="uncond",
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
        sampler="pndm",
        target="concept",
        esd_u_params="linear-conv",
        differences=(
            "esd_sd.py samples z_t at 1024x1024 px on SD 1.4; default here is the model's own "
            "size (pass --resolution 1024 to match)",
            "esd_sd.py runs every model in bfloat16; default here is fp32 (--precision bf16 "
            "autocasts)",
            "esd_sd.py draws r and the noise seed from Python's global random; here from "
            "(seed, iteration)",
        ),
    ),
}


class EsdSettings(BaseModel):
    """What to erase and how; None means 'the recipe's value'.

    Every float must be finite (a NaN or inf setting trains NaN weights without an error), and
    each number has the range in which training means something.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    concept: str = Field(min_length=1)
    method: Method = "esd-x"
    recipe: RecipeName = "paper"
    iterations: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    negative_guidance: float | None = Field(None, ge=0)
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


def settings_error(exc: Exception) -> str:
    """A pydantic error on EsdSettings as one line naming the CLI option, e.g. '--lr must be
    positive, got 0.0' (the field name follows when it is not the option's spelling)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return " ".join(str(exc).split())
    parts = []
    for e in errors():
        field = ".".join(str(p) for p in e["loc"])
        flag = "--" + field.replace("_", "-")
        ctx, got = e.get("ctx") or {}, f"{e.get('input')!r:.60}"
        above = "positive" if ctx.get("gt") == 0 else f"> {ctx.get('gt')}"
        text = {
            "literal_error": f"{got} is unknown; use one of {ctx.get('expected')}",
            "finite_number": f"must be a finite number, got {got}",
            "greater_than": f"must be {above}, got {got}",
            "greater_than_equal": f"must be at least {ctx.get('ge')}, got {got}",
            "less_than_equal": f"must be at most {ctx.get('le')}, got {got}",
        }.get(e["type"], f"{e['msg'].removeprefix('Value error, ')} (got {got})")
        text = f"{flag} {text}"
        parts.append(text if flag[2:] == field else f"{text} ({field})")
    return "; ".join(parts)
