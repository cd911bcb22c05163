"""The judges (NudeNet, Q16, SD's safety checker, the toy detectors, VLM judges: `registry`),
named rules, and the combined I2P "inappropriate" verdict.

Names are imported on first use, so `analysis.classifiers.registry` (the CLI's list of judges)
loads without pandas or any model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RULES": "rules",
    "Rule": "rules",
    "get_rule": "rules",
    "CLASSIFIERS": "run",
    "classify_run": "run",
    "consolidate_scores": "run",
    "read_scores": "run",
    "load_inappropriate": "verdicts",
    "load_verdicts": "verdicts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis.classifiers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analysis.classifiers.{_EXPORTS[name]}"), name)
