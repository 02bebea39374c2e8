"""One chat message: a role line and its Markdown body, streamable while the reply arrives."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownStream

from huozi_local.tui.widgets.plain import Label, lines

ROLE_LABELS = {"user": "你 You", "assistant": "活字 Huozi", "system": "系统 System"}


class MessageView(Vertical, can_focus=True):
    """A message; focus it and press `y` to copy its text."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "copy", "Copy message")]

    DEFAULT_CSS = """
    MessageView { height: auto; padding: 0 1; margin: 0 0 1 0; }
    MessageView > .role { text-style: bold; color: $text-accent; }
    MessageView.-user > .role { color: $text-success; }
    MessageView:focus { background: $boost; }
    MessageView > Markdown { margin: 0; padding: 0; }
    MessageView .note { color: $text-muted; text-style: italic; }
    """

    def __init__(self, role: str, text: str = "", *, note: str = "") -> None:
        super().__init__(classes=f"-{role}")
        self.role = role
        self.text = text
        self.note = note
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Label(ROLE_LABELS.get(self.role, self.role), classes="role")
        # Markdown never reads rich markup (`[b]` stays as typed); control characters are
        # escaped here, the text itself (what `y` copies) kept as it came.
        yield Markdown(lines(self.text))
        yield Label(self.note, classes="note")

    def on_mount(self) -> None:
        self.query_one(".note", Label).display = bool(self.note)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def start_stream(self) -> None:
        """Appends are batched by MarkdownStream so a fast model never waits for the screen."""
        self._stream = Markdown.get_stream(self.markdown)

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    async def write(self, fragment: str) -> None:
        if self._stream is None:
            self.start_stream()
        assert self._stream is not None
        self.text += fragment
        await self._stream.write(lines(fragment))

    async def finish(self, text: str, note: str = "") -> None:
        """Stop streaming and render the whole reply once (fixes any partial Markdown)."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.text = text
        await self.markdown.update(lines(text))
        self.set_note(note)

    def set_note(self, note: str) -> None:
        self.note = note
        label = self.query_one(".note", Label)
        label.update(note)
        label.display = bool(note)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.app.notify("Message copied to the clipboard", timeout=2)
