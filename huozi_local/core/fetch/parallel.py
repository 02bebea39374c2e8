"""One file over several HTTP connections, each fetching byte ranges, written where they belong.

Mirrors and CDNs often cap each connection (hf-mirror's users see about 4 MB/s each, which is
why its `hfd` script uses `aria2c -x`), and a 27 GB file at one capped connection takes hours.
Here N connections take ranges of the file (chunks in order, from a shared queue; when none is
left, the back half of the busiest range, so one slow connection never holds the end), and
every block is written at its place through a `RangeSink` as it arrives.

What is here is recorded durably: every half second the sink's files are synced and then the
caller's `on_durable` gets the ranges that are now on the disk (the caller writes its resume
record then), so a crash or `kill -9` at any moment loses at most the last half second. A 429
or 503 makes the connections back off, one fewer each time; other transient failures are
retried from the byte where they stopped; a 200 to a ranged request means the server ignores
ranges (`RangesIgnored`: the caller falls back to one stream).
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from huozi_local.core.errors import HuoziError, connection_failure_reason
from huozi_local.core.fetch.byte_ranges import Ranges, Task, WorkQueue
from huozi_local.core.fetch.transfer import (
    READ_TIMEOUT_S,
    TransferMeter,
    check_content_range,
    http_error_message,
)
from huozi_local.core.progress import ProgressCallback, ThrottledProgress

BLOCK = 1 << 20
MIN_CHUNK = 256 << 10
MAX_CHUNK = 32 << 20
CHUNKS_PER_CONNECTION = 4
DURABLE_EVERY_S = 0.5
MAX_ATTEMPTS_WITHOUT_PROGRESS = 5
BACK_OFF_STATUSES = frozenset({429, 503})
RETRY_STATUSES = frozenset({408, 500, 502, 504})
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class RangesIgnored(Exception):
    """The server answered a ranged request with the whole file (or refused ranges)."""


class RangeSink(Protocol):
    def write(self, src: int, data: memoryview) -> None:
        """Put source bytes [src, src + len(data)) where they belong."""

    def sync(self) -> None:
        """Make everything written so far durable."""


@dataclass(frozen=True)
class FetchStats:
    bytes_received: int
    seconds: float
    connections: int
    """Connections in use at the end (fewer than asked after the server said 429 or 503)."""
    requests: int
    splits: int


class _Retry(Exception):
    """A failure worth another request for the same range."""

    def __init__(self, message: str, back_off: bool = False) -> None:
        super().__init__(message)
        self.back_off = back_off


class ParallelFetch:
    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        size: int,
        sink: RangeSink,
        done: Ranges,
        *,
        connections: int,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        on_durable: Callable[[Ranges], None] | None = None,
        on_arrival: Callable[[], None] | None = None,
    ) -> None:
        self.url, self.headers, self.size = url, headers, size
        self.final_url = url
        """Where the first answer came from after redirects (a mirror's signed storage URL):
        later requests go there directly instead of being redirected one by one."""
        self.sink, self.done = sink, done
        self.connections = max(1, connections)
        self.limit = self.connections
        """How many connections may run: one fewer after each 429 or 503."""
        self.progress, self.cancel = progress, cancel
        self.on_durable, self.on_arrival = on_durable, on_arrival
        self.lock = threading.Condition()
        missing = done.missing(size)
        chunk = max(MIN_CHUNK, min(MAX_CHUNK, size // (self.connections * CHUNKS_PER_CONNECTION)))
        self.queue = WorkQueue(missing, chunk, MIN_CHUNK)
        self.received = 0
        self.requests = 0
        self.active = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._first_answer = threading.Event()
        """Set once one request has been answered: the others wait for it, so that a redirect
        (a mirror's signed storage URL) is followed once, not once per connection."""
        self._meter = TransferMeter(size)
        self._reporter = ThrottledProgress(progress, "download", size)
        self._opener = urllib.request.build_opener()  # honours HTTP(S)_PROXY / NO_PROXY

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> FetchStats:
        started = time.monotonic()
        workers = [
            threading.Thread(target=self._work, args=(i,), name=f"download-{i}", daemon=True)
            for i in range(self.connections)
        ]
        for worker in workers:
            worker.start()
        self._report(force=True)
        last_durable = time.monotonic()
        try:
            while any(w.is_alive() for w in workers):
                for worker in workers:
                    worker.join(0.02)
                if self.cancel is not None and self.cancel.is_set():
                    self._stop.set()
                if time.monotonic() - last_durable >= DURABLE_EVERY_S:
                    self._make_durable()
                    last_durable = time.monotonic()
                self._report()
        finally:
            self._stop.set()
            for worker in workers:
                worker.join()
            self._make_durable()
        if self.failure is not None:
            raise self.failure
        self._report(force=True)
        return FetchStats(
            self.received,
            time.monotonic() - started,
            self.limit,
            self.requests,
            self.queue.splits,
        )

    def _make_durable(self) -> None:
        self.sink.sync()
        if self.on_durable is not None:
            with self.lock:
                snapshot = Ranges(self.done)
            self.on_durable(snapshot)

    def _report(self, force: bool = False) -> None:
        with self.lock:
            have, active = self.done.total(), self.active

        def message() -> str:
            self._meter.update(have, time.monotonic())
            speed = self._meter.message()
            over = f" over {active} connection{'s' if active != 1 else ''}"
            return (speed.replace("/s", "/s" + over, 1) if speed else over.strip()) or ""

        self._reporter.update(have, message, force=force)

    # -- one connection ----------------------------------------------------------------------------
    def _work(self, index: int) -> None:
        try:
            if index:
                while not self._first_answer.wait(0.05) and not self._stop.is_set():
                    pass
            while not self._stop.is_set() and index < self.limit:
                task = self.queue.take(self._stop.is_set)
                if task is None:
                    return
                self._fetch_task(task, index)
        except BaseException as exc:  # handed to run(), which raises it in the caller's thread
            with self.lock:
                if self.failure is None:
                    self.failure = exc
            self._stop.set()
        finally:
            if index == 0:  # nothing left for the first connection: the others need not wait
                self._first_answer.set()

    def _fetch_task(self, task: Task, index: int) -> None:
        attempts = 0
        while task.pos < task.end:
            if self._stop.is_set() or index >= self.limit:
                self.queue.give_back(task)
                return
            before = task.pos
            try:
                self._request(task)
            except _Retry as exc:
                attempts = 0 if task.pos > before else attempts + 1
                if exc.back_off:
                    with self.lock:
                        self.limit = max(1, self.limit - 1)
                if attempts >= MAX_ATTEMPTS_WITHOUT_PROGRESS:
                    raise HuoziError(f"{exc}: run the command again to resume") from exc
                self._stop.wait(min(8.0, 0.25 * 2 ** max(0, attempts - 1)))
        self.queue.finish(task)

    def _request(self, task: Task) -> None:
        with self.queue.lock:
            end = task.end
        url, headers = self.final_url, self.headers
        if url != self.url and _origin(url) != _origin(self.url):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        request = urllib.request.Request(url, headers={**headers})
        request.add_header("Accept-Encoding", "identity")
        request.add_header("Range", f"bytes={task.pos}-{end - 1}")
        with self.lock:
            self.requests += 1
        try:
            try:
                response = self._opener.open(request, timeout=READ_TIMEOUT_S)
                if response.status == 206:
                    self.final_url = response.geturl() or self.final_url
            finally:
                self._first_answer.set()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in BACK_OFF_STATUSES:
                raise _Retry(f"the server answered HTTP {exc.code}", back_off=True) from exc
            if exc.code in RETRY_STATUSES:
                raise _Retry(f"the server answered HTTP {exc.code}") from exc
            if exc.code in (403, 404, 410) and url != self.url:
                self.final_url = self.url  # a signed URL that expired: be redirected afresh
                raise _Retry(f"the storage URL answered HTTP {exc.code}") from exc
            if exc.code in (416, 501):
                raise RangesIgnored(f"HTTP {exc.code} to a ranged request") from exc
            raise HuoziError(http_error_message(exc.code, self.url)) from exc
        except _TRANSIENT as exc:
            raise _Retry(f"connection failed ({connection_failure_reason(exc)})") from exc
        with self.lock:
            self.active += 1
        try:
            with response:
                if response.status != 206:
                    raise RangesIgnored(f"HTTP {response.status} to a ranged request")
                check_content_range(response.headers.get("Content-Range"), task.pos)
                self._stream(response, task)
        except _TRANSIENT as exc:
            raise _Retry(f"connection dropped ({connection_failure_reason(exc)})") from exc
        finally:
            with self.lock:
                self.active -= 1

    def _stream(self, response: http.client.HTTPResponse, task: Task) -> None:
        cancelled = self.cancel.is_set if self.cancel is not None else lambda: False
        while not self._stop.is_set() and not cancelled():
            with self.queue.lock:
                want = min(BLOCK, task.end - task.pos)  # the end moves when split
            if want <= 0:
                return  # the back half went to another connection
            # read1: what has arrived (up to a block), so that a connection that slows down
            # or stalls has written and recorded all it received, never holding half a block
            data = response.read1(want)
            n = len(data)
            if not n:
                raise http.client.IncompleteRead(b"", task.end - task.pos)
            self.sink.write(task.pos, memoryview(data))
            with self.lock:
                self.done.add(task.pos, task.pos + n)
                self.received += n
                self.lock.notify_all()
            with self.queue.lock:
                task.pos += n
            if self.on_arrival is not None:
                self.on_arrival()


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port
