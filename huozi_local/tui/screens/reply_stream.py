"""What passes between the reply worker and the chat screen, and how often the screen draws.

The worker thread produces text far faster than a terminal can lay it out; it queues text in
PendingText and tells the screen once per batch, and the screen draws at a pace set by what
drawing costs it (see UI_SHARE_OF_WALL).
"""

from __future__ import annotations

import threading

from textual.message import Message

from huozi_local.core.chat.types import ReplyResult

DRAW_INTERVAL_S = 0.1
# The most of the wall clock the UI thread may spend on a streaming reply. Drawing holds the GIL,
# and generation runs Python between llama.cpp calls, so every millisecond the screen spends
# parsing and laying out Markdown is a millisecond the model waits. Draws are paced by their own
# measured cost: a long reply that gets expensive to lay out is drawn less often, never slower.
UI_SHARE_OF_WALL = 0.05


class PendingText:
    """Text the worker produced that the screen has not drawn yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []

    def add(self, text: str) -> bool:
        """Queue text; True when the screen must be told (nothing was waiting before)."""
        with self._lock:
            was_empty = not self._parts
            self._parts.append(text)
            return was_empty

    def take(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            self._parts.clear()
            return text


class ReplyText(Message):
    """New text is waiting in the screen's PendingText."""


class ReplyNotice(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ReplyEnded(Message):
    def __init__(self, result: ReplyResult | None, error: str = "") -> None:
        super().__init__()
        self.result = result
        self.error = error
