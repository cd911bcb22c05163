"""Inference-time guidance: SLD, SEGA and SAFREE as pure tensor functions, presets, negative
prompt."""

from analysis.guidance.configs import (
    CONFIG_NAMES,
    DEFAULT_SAFETY_CONCEPT,
    PRESETS,
    GuidanceConfig,
    SegaParams,
    SLDParams,
    resolve_config,
)
from analysis.guidance.safree import SAFREE_NUDITY_CONCEPT, SafreeParams
from analysis.guidance.sega import sega_noise_guidance
from analysis.guidance.sld import sld_noise_guidance

__all__ = [
    "CONFIG_NAMES",
    "DEFAULT_SAFETY_CONCEPT",
    "PRESETS",
    "SAFREE_NUDITY_CONCEPT",
    "GuidanceConfig",
    "SLDParams",
    "SafreeParams",
    "SegaParams",
    "resolve_config",
    "sega_noise_guidance",
    "sld_noise_guidance",
]
