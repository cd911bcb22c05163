"""Names that become folder names (prompt ids, config names, run names): one rule, one check.

A name reaches the file system as a path component (images/<config>/<prompt_id>/...), so it must
not be able to climb out of its folder ('..'), hide ('.x'), or carry separators; the rule is an
allow-list rather than a list of bad characters so nothing unexpected slips through.
"""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=-]{0,127}")
SAFE_NAME_HELP = "1-128 characters from A-Z a-z 0-9 . _ + = -, not starting with '.' or '-'"


def check_safe_name(value: object, what: str) -> str:
    """Return `value` if it can be a folder name, else raise ValueError naming `what`."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} cannot be used as a folder name ({SAFE_NAME_HELP})")
    return value
