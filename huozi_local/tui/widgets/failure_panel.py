"""A failure that stays on screen until the user acts: the reason, what to do next, and buttons.

A toast disappears after a few seconds, and a person who looked away comes back to a screen that
says only "Failed". This panel keeps the one-line reason (the CLI's wording) and the next steps
visible, and its buttons are the ways on; it hides only when one of them is used or new work
starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button
from textual.widgets.button import ButtonVariant

from huozi_local.tui.widgets.plain import Label, one_line


class FailurePanel(Vertical):
    DEFAULT_CSS = """
    FailurePanel {
        height: auto; border: round $error; padding: 0 1; margin-top: 1; display: none;
    }
    FailurePanel Label { width: 1fr; }  /* wrap: the reason and the next steps are read whole */
    FailurePanel #failure-reason { color: $text-error; }
    FailurePanel Horizontal { height: auto; margin-top: 1; }
    FailurePanel Button { margin-right: 1; }
    """

    class Chosen(Message):
        """One of the panel's buttons: `action` is the id it was given."""

        def __init__(self, action: str) -> None:
            super().__init__()
            self.action = action

    def __init__(self, actions: Sequence[tuple[str, str]], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.actions = list(actions)
        self.reason = ""

    def compose(self) -> ComposeResult:
        yield Label("", id="failure-reason")
        yield Label("", id="failure-next")
        with Horizontal():
            for index, (action, label) in enumerate(self.actions):
                variant: ButtonVariant = "primary" if index == 0 else "default"
                yield Button(one_line(label), id=f"failure-{action}", variant=variant)

    def show(self, reason: str, next_steps: str) -> None:
        self.reason = reason
        self.query_one("#failure-reason", Label).update(reason)
        self.query_one("#failure-next", Label).update(next_steps)
        self.display = True
        # Scroll only once the panel has a size: the failure is often below the fold of a
        # laptop terminal, and focusing before layout scrolls to where the panel was (nowhere).
        self.call_after_refresh(self._reveal)

    def _reveal(self) -> None:
        self.query_one(Button).focus(scroll_visible=False)
        self.scroll_visible(animate=False, top=False)

    def hide(self) -> None:
        self.reason = ""
        self.display = False

    @property
    def showing(self) -> bool:
        return bool(self.display)

    @on(Button.Pressed)
    def _chosen(self, event: Button.Pressed) -> None:
        event.stop()
        action = (event.button.id or "").removeprefix("failure-")
        self.post_message(self.Chosen(action))
