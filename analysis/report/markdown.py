"""Markdown output that stays inert: user text renders as the same text, never as markup.

Prompts, run and config names, groups, titles and rater ids are untrusted. Copied verbatim into
Markdown, `![t](http://host/track.png)` loads a tracking pixel wherever the file is rendered,
`[x](javascript:...)` is a live link and `<script>` is raw HTML. The Markdown environment
therefore escapes every `{{ value }}` in one place (Jinja's `finalize`), the Markdown analogue
of the HTML report's autoescaping: whitespace runs (newlines included) collapse to one space so
no value can open a block, `<`, `>` and `&` become entities (no raw HTML or autolinks), and
CommonMark's inline metacharacters get a backslash. Values our own code built (file links)
are wrapped in `Md` to say they are already Markdown. User text is never put in a code span:
backslashes and entities do not work there, so `<script>` would stay in the file raw.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader

#: Escaped wherever they occur: emphasis, code, links, images, tables, strikethrough, math,
#: backslashes, and ':'/'@' so that GFM's autolink extension sees no scheme or e-mail address.
ALWAYS = frozenset("\\`*_{}[]()|~$:@")
#: Meaningful only where a line (or the value) starts: headings, lists, block quotes.
AT_START = frozenset("#+-=")
ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


class Md(str):
    """Text that is already safe Markdown (built by this module), so it is not escaped again."""


def md_text(value: Any) -> Md:
    """`value` as inert inline Markdown: one line, rendering as exactly its own characters."""
    if isinstance(value, Md):
        return value
    text = " ".join(str(value).split())
    if _NUMBER.fullmatch(text):
        return Md(text)
    out = []
    for i, ch in enumerate(text):
        following = text[i + 1 : i + 2]
        if ch in ENTITIES:
            out.append(ENTITIES[ch])
        elif (
            ch in ALWAYS
            or (i == 0 and ch in AT_START)
            or (ch == "." and not following.isdigit())  # '1. ' list marker, 'www.' autolink
            or (ch == "!" and following == "[")
        ):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return Md("".join(out))


def md_link_target(path: str) -> Md:
    """A relative file path as a link destination: percent-encoded, so nothing in it is markup."""
    return Md(quote(path, safe="/"))


def _finalize(value: Any) -> Any:
    """Applied by Jinja to every `{{ ... }}`: None stays 'None' as before, text is escaped."""
    return md_text(value)


def environment() -> Environment:
    """The Jinja environment of report.md.j2: every expression escaped by `md_text`."""
    env = Environment(
        loader=PackageLoader("analysis.report", "templates"),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters["md"] = md_text
    return env
