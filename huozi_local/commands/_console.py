"""The one way the commands make a rich Console: one that shows every string as it is.

Most of what the commands print comes from outside the program: a model's general.name and tensor
names, a server's model id, a path, what a person typed at `/system`. With rich's defaults a
`[/INST]` in any of them raised MarkupError (a traceback instead of the output), `[bold]x[/]`
lost its tags and `:fire:` became an emoji. Escaping each value where it is printed misses the
next one added; a console that never parses strings cannot. Styles are given as styles
(`style=`, `Text(..., style=)`), never written into strings.

Control characters are written as escapes (`\x1b`, `\n`), never sent to the terminal: an
`ESC [2J` in a general.name cleared the screen of whoever ran `inspect`, a newline in a file
name split a row of `models` (`core.control_text`). The console escapes every string it is
given; a styled piece of outside text is made with `styled`, which escapes it the same way
(tests/test_markup_audit.py holds the commands to both).

Printed lines are not wrapped either (soft wrap): piped output kept rich's 80 columns and broke a
long path or name over two lines; a terminal wraps what it shows by itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

from huozi_local.core.control_text import visible

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


def text_console(file: TextIO | None = None) -> Console:
    """A Console that prints strings verbatim (no markup, no emoji codes, no highlighting,
    no line breaks of its own outside tables), control characters escaped."""
    from rich.console import Console

    class TextConsole(Console):
        # Every plain string printed, or put in a table cell or title, passes through here.
        def render_str(self, text: str, **options: Any) -> Text:
            return super().render_str(visible(text), **options)

    return TextConsole(file=file, markup=False, emoji=False, highlight=False, soft_wrap=True)


def styled(text: str, style: str) -> Text:
    """`text` in one style, its control characters escaped as the console escapes strings."""
    from rich.text import Text

    return Text(visible(text), style=style)
