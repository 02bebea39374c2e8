"""The one way the commands make a rich Console: one that shows every string as it is.

Most of what the commands print comes from outside the program: a model's general.name and tensor
names, a server's model id, a path, what a person typed at `/system`. With rich's defaults a
`[/INST]` in any of them raised MarkupError (a traceback instead of the output), `[bold]x[/]`
lost its tags and `:fire:` became an emoji. Escaping each value where it is printed misses the
next one added; a console that never parses strings cannot. Styles are given as styles
(`style=`, `Text(..., style=)`), never written into strings.

Printed lines are not wrapped either (soft wrap): piped output kept rich's 80 columns and broke a
long path or name over two lines; a terminal wraps what it shows by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console


def text_console(file: TextIO | None = None) -> Console:
    """A Console that prints strings verbatim (no markup, no emoji codes, no highlighting,
    no line breaks of its own outside tables)."""
    from rich.console import Console

    return Console(file=file, markup=False, emoji=False, highlight=False, soft_wrap=True)
