"""How the app shows text it did not write: as it is, never as markup, control characters escaped.

A model file's name and its general.name, a server's model id, a reply, a saved title: any of
them may hold `[/INST]` (markup that crashed the app) or an `ESC` (byte-fallback tokens produce
one). Textual drops only BEL, BS, VT, FF and CR from what it draws, so an `ESC [2J` cleared the
screen and an OSC 52 sequence wrote the person's clipboard. Escaping each value where it is
shown misses the next one added; so the app's Label and Static are these (markup off, every string
escaped, also when updated), notifications escape in `HuoziApp.notify`, and what takes a
Content (a status line, a choice, a radio label) gets one from `one_line`.
tests/test_markup_audit.py holds the app to it: no other module imports Textual's own Label or
Static, builds a Content or a rich Text, or gives a widget that draws it unescaped text.

An editor (Input, TextArea) draws what it holds, so outside text (a saved title, the last
message, config.toml's system prompt) is given to it escaped too: what the person edits, and
what is saved or sent from it, is what they see.

Widgets that show several lines keep `\\n` (and `\\t`, which code in a reply indents with) as
line breaks; everything else (`\\x1b`, `\\r`, a bidi override) is written as an escape
(`core.control_text`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from textual.content import Content
from textual.widgets import Label as _Label
from textual.widgets import Static as _Static

from huozi_local.core.control_text import visible

if TYPE_CHECKING:
    from textual.visual import VisualType

_NOT_A_LINE_BREAK = re.compile("[^\n\t]+")


def lines(text: str) -> str:
    """`text` with its line breaks and tabs kept and every other control character escaped."""
    return _NOT_A_LINE_BREAK.sub(lambda run: visible(run.group()), text)


def one_line(text: str) -> Content:
    """`text` as one line of Content (no markup), every control character escaped, `\\n` too."""
    return Content(visible(text))


def _plain(content: VisualType) -> VisualType:
    # Content and other visuals are built by our code (one_line); strings come from anywhere.
    return lines(content) if isinstance(content, str) else content


class Static(_Static):
    """Textual's Static that never reads markup and escapes control characters."""

    def __init__(self, content: VisualType = "", **options: Any) -> None:
        options["markup"] = False
        super().__init__(_plain(content), **options)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        super().update(_plain(content), layout=layout)


class Label(_Label):
    """Textual's Label that never reads markup and escapes control characters."""

    def __init__(self, content: VisualType = "", **options: Any) -> None:
        options["markup"] = False
        super().__init__(_plain(content), **options)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        super().update(_plain(content), layout=layout)
