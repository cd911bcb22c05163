"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class AuditError(Exception):
    """Bad input or environment: the message names the problem and how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a stage; the message says what was kept and how to resume."""


class MissingExtraError(AuditError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(
            f"{purpose} needs the optional package '{module}', which is not installed: "
            f"pip install 't2i-audit[{extra}]'"
        ) from exc


def one_line(exc: Any) -> str:
    """A pydantic ValidationError as one line: 'field: message; field: message'."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return " ".join(str(exc).split())
    parts = []
    for e in errors():
        where = ".".join(str(p) for p in e["loc"])
        text = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if where and isinstance(value, (str, int, float)) and repr(value) not in text:
            text += f" (got {value!r:.60})"
        parts.append(f"{where}: {text}" if where else text)
    return "; ".join(parts)
