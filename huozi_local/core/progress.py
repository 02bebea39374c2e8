"""The progress-and-cancel contract shared by every long operation in the core.

Long work (download, verify, repair, model load, generation) takes an optional `progress`
callback and an optional `cancel` event. The CLI turns the callbacks into a rich progress bar,
the TUI into messages posted from a worker; the core never knows which. Callbacks may be called
from a worker thread and must be cheap: the core throttles them, so they are not per byte.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from huozi_local.core.errors import Cancelled

Stage = Literal["download", "verify", "repair", "copy", "load"]
"""Every kind of long work that reports progress; front ends label each one."""


@dataclass(frozen=True)
class Progress:
    """One progress report. `total` is None when the size is not known yet."""

    stage: Stage
    done: int
    total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


def check_cancel(cancel: threading.Event | None, what: str = "operation") -> None:
    """Raise `Cancelled` when the caller asked to stop."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


class ThrottledProgress:
    """Forwards at most a few reports per second, plus always the first and the final one.

    Byte-level loops call `update` for every chunk; without throttling a UI would spend more
    time drawing than the loop spends working.
    """

    def __init__(
        self,
        callback: ProgressCallback | None,
        stage: Stage,
        total: int | None,
        interval_s: float = 0.1,
    ) -> None:
        self._callback = callback
        self._stage = stage
        self._total = total
        self._interval_s = interval_s
        self._last = 0.0
        self.done = 0

    def update(
        self, done: int, message: str | Callable[[], str] = "", *, force: bool = False
    ) -> None:
        """`message` may be a function, called only for the reports that go out (speed, ETA)."""
        self.done = done
        if self._callback is None:
            return
        now = time.monotonic()
        finished = self._total is not None and done >= self._total
        if force or finished or now - self._last >= self._interval_s:
            self._last = now
            text = message() if callable(message) else message
            self._callback(Progress(self._stage, done, self._total, text))

    def advance(self, n: int, message: str = "") -> None:
        self.update(self.done + n, message)
