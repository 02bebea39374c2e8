"""Log lines that a peer can cause are rate-limited, so no client can fill the disk through them.

uvicorn logs a warning for every malformed request and a traceback for every failing request,
and asyncio a traceback for every accept() that hits the fd limit, up to 2048 a loop turn: under
a slow-client attack 64 MB in 12 s (the issue), 77 MB in 17 s (measured here). Each kind of
message (its logger and first line) may appear `burst` times per `window` seconds; the next one
let through says how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

LIMITED_LOGGERS = ("uvicorn.error", "asyncio")
MAX_KINDS = 256


class RateLimitFilter(logging.Filter):
    def __init__(
        self, burst: int = 5, window: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._kinds: dict[tuple[str, str], list[float]] = {}
        """Per kind: [window start, lines let through in it, lines left out since the last]."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, str(record.msg).split("\n", 1)[0][:100])
        now = self.clock()
        state = self._kinds.get(kind)
        if state is None:
            if len(self._kinds) >= MAX_KINDS:  # messages that embed changing values
                self._kinds.clear()
            state = self._kinds[kind] = [now, 0, 0]
        if now - state[0] >= self.window:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        if state[2]:
            record.msg = f"{record.msg} ({int(state[2])} more like this were not logged)"
            state[2] = 0
        return True


@contextmanager
def rate_limited_logs(burst: int = 5, window: float = 10.0) -> Iterator[RateLimitFilter]:
    """Limit the loggers peers can reach while the block runs (one server's lifetime)."""
    limiter = RateLimitFilter(burst, window)
    loggers = [logging.getLogger(name) for name in LIMITED_LOGGERS]
    for logger in loggers:
        logger.addFilter(limiter)
    try:
        yield limiter
    finally:
        for logger in loggers:
            logger.removeFilter(limiter)
