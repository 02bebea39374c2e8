"""A range given back by a connection that backs off is fetched by one that had nothing to do.

The order is forced by the server, not by timing: the first connection's body is held until the
second connection has asked for its range, and the second one's "429 slow down" until the first
connection, done with its range, has found nothing left to take. Then the second connection
gives its range back and stops (one connection fewer). Before the fix the first connection had
stopped already and the range was never fetched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from huozi_local.core.fetch.byte_ranges import Ranges, Task, WorkQueue
from huozi_local.core.fetch.parallel import MIN_CHUNK, ParallelFetch

SIZE = 2 * MIN_CHUNK  # two chunks, each too small to split: one per connection
BLOB = bytes(range(256)) * (SIZE // 256)
WAIT_S = 60  # only reached when the order below never happens: a failure, not a timing


class Choreography:
    """What each ranged request waits for, in the order they arrive."""

    def __init__(self) -> None:
        self.second_asked = threading.Event()
        self.first_found_nothing = threading.Event()
        self.arrivals = 0
        self.statuses: list[int] = []
        self.lock = threading.Lock()

    def arrive(self) -> int:
        with self.lock:
            self.arrivals += 1
            return self.arrivals


class Handler(BaseHTTPRequestHandler):
    plan: ClassVar[Choreography]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        assert match is not None
        start, end = int(match.group(1)), int(match.group(2)) + 1
        arrival = self.plan.arrive()
        if arrival == 2:  # the second connection: told to back off, once the first is idle
            self.plan.second_asked.set()
            self.plan.first_found_nothing.wait(WAIT_S)
            self.plan.statuses.append(429)
            self.send_response(429)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.plan.statuses.append(206)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{SIZE}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        self.wfile.flush()
        if arrival == 1:  # the first: its body only once the second connection has a range
            self.plan.second_asked.wait(WAIT_S)
        self.wfile.write(BLOB[start:end])


class MemorySink:
    def __init__(self) -> None:
        self.data = bytearray(SIZE)

    def write(self, src: int, data: memoryview) -> None:
        self.data[src : src + len(data)] = data

    def sync(self) -> None:
        pass


class WatchedQueue(WorkQueue):
    """The fetch's own queue, telling the test when a connection found nothing to take."""

    def __init__(self, found_nothing: threading.Event) -> None:
        super().__init__(Ranges().missing(SIZE), MIN_CHUNK, MIN_CHUNK)
        self.found_nothing = found_nothing

    def take(self, stopped: Callable[[], bool] = lambda: True) -> Task | None:
        def watched() -> bool:
            self.found_nothing.set()  # asked only when nothing is pending or worth splitting
            return stopped()

        return super().take(watched)


@pytest.fixture
def server() -> Iterator[tuple[str, Choreography]]:
    plan = Choreography()
    handler = type("PlannedHandler", (Handler,), {"plan": plan})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/blob", plan
    finally:
        plan.second_asked.set()
        plan.first_found_nothing.set()
        httpd.shutdown()
        httpd.server_close()


def test_a_range_given_back_after_429_is_fetched_by_the_connection_left(
    server: tuple[str, Choreography],
) -> None:
    url, plan = server
    sink = MemorySink()
    fetch = ParallelFetch(url, {}, SIZE, sink, Ranges(), connections=2)
    fetch.queue = WatchedQueue(plan.first_found_nothing)
    stats = fetch.run()
    assert plan.statuses[:2] == [206, 429]  # the order above happened
    assert fetch.done.missing(SIZE) == []
    assert bytes(sink.data) == BLOB
    assert stats.connections == 1  # one fewer after the 429
