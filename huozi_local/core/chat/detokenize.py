"""Turning generated tokens into text a terminal can show as it arrives.

Two things make this more than `bytes.decode`: a Chinese character may arrive as three
byte-fallback tokens (only whole characters may be shown), and a stop string such as
`<|endofutterance|>` may arrive spread over several tokens (nothing that could be its start may be
shown until it is clear it is not).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class Utf8Stream:
    """Bytes in, whole characters out; an unfinished character waits for its next bytes."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._decoder.decode(self._piece(token))

    def flush(self) -> str:
        """What is left at the end; only here may a broken character become U+FFFD."""
        return self._decoder.decode(b"", final=True)


class StopText:
    """Holds back text that could be the start of a stop string; finds a completed one.

    `push` returns the text safe to show now and whether a stop string was completed (the stop
    string itself, and anything after it, is never returned).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._first_chars = frozenset(s[0] for s in self._stops)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        pending = self._pending + text
        if not self._first_chars.intersection(pending):
            self._pending = ""
            return pending, False
        cut = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            return pending[:cut], True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:size]):
                    hold = size
                    break
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        """The held-back text, once it is known no stop string will complete it."""
        pending, self._pending = self._pending, ""
        return pending
