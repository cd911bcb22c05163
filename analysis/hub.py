"""Offline by default: nothing is downloaded unless the user opts in.

An audit should never fetch gigabytes (or a different revision) behind the user's back, and the
hub client's retries make a missing model look like a hang. Opt in with T2I_AUDIT_ALLOW_DOWNLOAD=1
(or an explicit HF_HUB_OFFLINE=0).
"""

from __future__ import annotations

import os
from typing import Any

from analysis.errors import AuditError

OPT_IN = "set T2I_AUDIT_ALLOW_DOWNLOAD=1 to let t2i-audit download it"
_TRUE = {"1", "true", "yes", "on"}


def downloads_allowed() -> bool:
    """True only when the user asked for downloads."""
    if os.environ.get("T2I_AUDIT_ALLOW_DOWNLOAD", "").lower() in _TRUE:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"0", "false", "no", "off"}


def enforce_offline() -> None:
    """Make the hub libraries offline too (read at their import) unless downloads are allowed."""
    if not downloads_allowed():
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def not_available(what: str, spec: str, local: bool, advice: str, exc: Exception) -> AuditError:
    """The one-line error when from_pretrained finds no weights: where it looked, what to do."""
    from huggingface_hub import constants

    where = spec if local else f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    return AuditError(
        f"{what} {spec!r} is not available: looked in {where}. {advice}. "
        f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
    )


def snapshot_provenance(spec: str, config: Any) -> dict[str, Any]:
    """{"id": spec} plus the hub snapshot (commit) the loaded weights came from, when known."""
    prov: dict[str, Any] = {"id": spec}
    commit = getattr(config, "_commit_hash", None)
    if commit:
        prov["revision"] = commit
    return prov
