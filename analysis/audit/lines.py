"""Map a validation error's location (('probe', 'rule'), ('models', 1, 'dtype')) to a file line.

tomllib keeps no positions, so the TOML text is scanned for table headers and keys: good enough
to point a user at the line to fix, which is all an error message needs.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*|\"[^\"]*\")\s*=")

Loc = tuple[str | int, ...]


def _split(dotted: str) -> list[str]:
    return [part.strip().strip('"') for part in dotted.split(".")]


def key_lines(text: str) -> list[tuple[int, Loc]]:
    """(line number, path) of every table header and key, arrays of tables indexed."""
    out: list[tuple[int, Loc]] = []
    current: Loc = ()
    arrays: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = tuple(_split(header.group(2)))
            if header.group(1) == "[[":
                arrays[names] = arrays.get(names, -1) + 1
                current = (*names, arrays[names])
            else:
                current = names
            out.append((number, current))
            continue
        key = _KEY.match(line)
        if key:
            out.append((number, (*current, *_split(key.group(1)))))
    return out


def find_line(text: str, loc: Loc, value: object = None) -> int:
    """The line that best matches `loc` (longest shared prefix; 1 when nothing matches).

    When the offending value is a string inside a list, the line holding that string is preferred
    (a bad entry of a multi-line `configs = [...]`).
    """
    best, best_len = 1, 0
    for number, path in key_lines(text):
        shared = 0
        for a, b in zip(path, loc, strict=False):
            if a != b:
                break
            shared += 1
        if shared > best_len:
            best, best_len = number, shared
    if isinstance(value, str) and value and loc and isinstance(loc[-1], int):
        lines = text.splitlines()
        for offset, line in enumerate(lines[best - 1 : best + 200]):
            if f'"{value}"' in line or f"'{value}'" in line:
                return best + offset
    return best
