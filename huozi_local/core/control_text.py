"""Characters that a terminal acts on instead of showing, and how text holding them is shown.

A model's general.name, its tensor names and a file's own name are written by whoever made the
file. An `ESC [2J` among them cleared the screen of the person running `inspect`; an OSC sequence
can retitle the terminal or plant a link; a newline split a row of `models` in two; bytes that
are not UTF-8 (a file name from another system, kept by Python as lone surrogates) made printing
fail. Bidi overrides reorder what is shown around them. All of them are written as escapes, so
what is shown is what the file holds, on one line.
"""

from __future__ import annotations

import re

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""C0 and C1 controls, DEL, bidi embeddings, overrides and isolates, lone surrogates."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character written as an escape (`\\x1b`, `\\n`, `\\xff` for a
    byte that was not UTF-8); text without any is returned as it is."""
    return CONTROL.sub(_escape, text)


def plain_name(name: str) -> str:
    """A file name made of text only: each control character or undecodable byte becomes `_`
    (an escape's backslash would be a folder separator on Windows)."""
    return CONTROL.sub("_", name)
