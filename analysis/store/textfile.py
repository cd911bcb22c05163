"""Reading a user's text file (prompts, blocked terms, an audit file) in bounded memory.

A text file given on the command line is untrusted: it may be Latin-1 or UTF-16, a binary file
given by mistake, or one 50 MB line. Each problem is an AuditError naming the file, the line
and the byte offset, found before any of the file is used; the file is read line by line with a
cap on each line and on the whole, so a huge file costs neither minutes nor gigabytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from analysis.errors import AuditError

#: a file above this many bytes is refused before it is read (4703 I2P prompts take ~0.8 MB)
MAX_FILE_BYTES = 64 * 2**20
#: characters per line; CLIP's tokenizer keeps 77 tokens, so a real prompt is far shorter
MAX_LINE_CHARS = 10_000
_BOM = b"\xef\xbb\xbf"


class NotUTF8(AuditError):
    """A line that is not UTF-8; `line` (1-based) and `byte` (0-based, in the file) locate it."""

    def __init__(self, what: str, path: Path, line: int, byte: int, reason: str) -> None:
        super().__init__(
            f"{what} {path}: line {line} is not UTF-8 text (byte {byte}: {reason}); "
            "save the file as UTF-8"
        )
        self.line, self.byte, self.reason = line, byte, reason


def read_text(
    path: str | Path,
    what: str,
    *,
    max_line: int | None = MAX_LINE_CHARS,
    max_bytes: int = MAX_FILE_BYTES,
) -> str:
    """The file's text exactly (line endings kept, a UTF-8 BOM dropped), checked as it is read.

    `what` names the file in errors ('prompts file', 'blocked-terms file'). A line longer than
    `max_line` characters (None: no cap beyond `max_bytes`) is refused naming its number. At
    most 4 bytes per character plus the line ending are read per line, so memory stays bounded.
    """
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise AuditError(f"{what} {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise AuditError(
                f"{what} {path} is {size:,} bytes, over the limit of {max_bytes:,} bytes"
            )
        with path.open("rb") as handle:
            return "".join(_lines(handle, path, what, max_line, max_bytes))
    except OSError as exc:
        raise AuditError(f"{what} {path} cannot be read: {exc.strerror}") from None


def read_text_lines(
    path: str | Path, what: str, *, max_line: int | None = MAX_LINE_CHARS
) -> list[str]:
    """`read_text` split into lines as `str.splitlines` does."""
    return read_text(path, what, max_line=max_line).splitlines()


def _lines(
    handle: BinaryIO, path: Path, what: str, max_line: int | None, max_bytes: int
) -> Iterator[str]:
    """Each line decoded and checked in turn; byte offsets in errors count from the file's start."""
    offset, number = 0, 0
    cap = max_bytes + 1 if max_line is None else 4 * max_line + 2  # + '\r\n'
    while raw := handle.readline(cap):
        number += 1
        if offset + len(raw) > max_bytes:  # the file grew after stat
            raise AuditError(f"{what} {path} is over the limit of {max_bytes:,} bytes")
        ending = len(raw) - len(raw.rstrip(b"\r\n"))
        if max_line is not None and len(raw) == cap and not ending:
            raise _too_long(what, path, number, max_line)
        start = len(_BOM) if number == 1 and raw.startswith(_BOM) else 0
        try:
            text = raw[start:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotUTF8(what, path, number, offset + start + exc.start, exc.reason) from None
        if max_line is not None and len(text) - ending > max_line:
            raise _too_long(what, path, number, max_line)
        yield text
        offset += len(raw)


def _too_long(what: str, path: Path, number: int, max_line: int) -> AuditError:
    return AuditError(
        f"{what} {path}: line {number} is longer than {max_line:,} characters, the limit "
        "(CLIP's tokenizer keeps only 77 tokens of a prompt)"
    )
