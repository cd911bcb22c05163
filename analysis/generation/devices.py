"""One check of a device string, before anything is written: 'cpu', 'cuda', 'cuda:N', 'mps'."""

from __future__ import annotations

import os

from analysis.errors import AuditError


def rank_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU: 'cuda' becomes cuda:LOCAL_RANK."""
    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None:
        if not local.strip().isdigit():
            raise AuditError(f"environment variable LOCAL_RANK={local!r} is not a GPU index")
        return f"cuda:{int(local)}"
    return device


def check_device(device: str) -> str:
    """The device this process will use, or one line saying why it cannot be used here.

    'cpu' needs no torch import (a finished run re-opened on the CPU stays fast); anything else
    allocates an empty tensor there, which is what fails first for a missing GPU or index.
    """
    device = rank_device(str(device).strip())
    if device == "cpu":
        return device
    import torch

    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise AuditError(f"device {device!r} is not usable here: {reason}") from None
    return device
