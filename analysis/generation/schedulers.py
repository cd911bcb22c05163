"""`--scheduler NAME`: which diffusers schedulers a Stable Diffusion run may swap in.

`getattr(diffusers, NAME)` accepts any public name, so a model class (`UNet2DConditionModel`) or a
pipeline got built "as the scheduler" and the run died mid-way with a traceback. The allowed set is
diffusers' own list of schedulers that are interchangeable for SD 1.x/2.x/XL
(`KarrasDiffusionSchedulers`, what each SD scheduler's `compatibles` names), checked once in the
spec before anything is created, and again where the model is loaded.
"""

from __future__ import annotations

from typing import Any

from analysis.errors import AuditError


def sd_scheduler_names() -> list[str]:
    """Class names of the schedulers diffusers declares interchangeable for Stable Diffusion."""
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    return [e.name for e in KarrasDiffusionSchedulers]


def scheduler_class(name: str) -> Any:
    """The diffusers scheduler class for `name` ('DDIMScheduler' or short 'DDIM').

    Raises an AuditError naming the input when it is not such a scheduler, or when its optional
    package (e.g. torchsde for DPMSolverSDEScheduler) is missing.
    """
    import diffusers
    from diffusers.utils import DummyObject

    allowed = sd_scheduler_names()
    text = str(name).strip()
    full = text if text in allowed else f"{text}Scheduler"
    if full not in allowed:
        raise AuditError(
            f"--scheduler {name!r} is not a Stable Diffusion scheduler; use one of "
            f"{', '.join(allowed)} (the 'Scheduler' suffix may be left out)"
        )
    cls = getattr(diffusers, full)
    if isinstance(cls, DummyObject):  # diffusers' placeholder when a backend is missing
        raise AuditError(
            f"--scheduler {name!r}: {full} needs an optional package that is not installed "
            f"({', '.join(getattr(cls, '_backends', []))})"
        )
    return cls


def check_scheduler(name: str | None) -> str | None:
    """Spec-level guard: the name unchanged when valid (or None), else an AuditError."""
    if name is not None:
        scheduler_class(name)
    return name
