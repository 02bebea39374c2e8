"""Slow and idle clients cannot silence the server: a request head or body that stops coming is
cut off at its deadline, connections over the cap make room by shedding the longest idle ones,
and what a peer can make the server log is rate-limited. Real server, real sockets; short
timeouts so nothing waits long (and nothing asserts how long anything took)."""

from __future__ import annotations

import dataclasses
import http.client
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from api_server import RunningServer, running_server

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.server.connections import FD_RESERVE, ConnectionLimits
from huozi_local.server.log_limit import RateLimitFilter
from huozi_local.testing.tiny_model import TinyModels

pytestmark = pytest.mark.slow
SHORT = ConnectionLimits(header_timeout=0.5, body_timeout=0.5)
PATIENT = ConnectionLimits(header_timeout=120, body_timeout=120, keep_alive_timeout=120)
"""Deadlines far beyond the test, so only the connection cap closes anything."""
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.fixture(scope="module")
def engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    loaded = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", rig="chat"), LoadOptions(n_ctx=512, seed=1)
    )
    yield loaded
    loaded.close()


def connect(server: RunningServer) -> socket.socket:
    parts = urlsplit(server.url)
    return socket.create_connection((parts.hostname or "", parts.port or 0), timeout=60)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed);
    a server that never closes it fails the test with a TimeoutError."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def health_on(sock: socket.socket) -> int:
    sock.sendall(HEALTH)
    return read_response(sock)


def read_response(sock: socket.socket) -> int:
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    response.close()
    return response.status


def health(server: RunningServer) -> int:
    with connect(server) as sock:
        return health_on(sock)


def test_a_request_head_that_stops_coming_is_closed_at_the_header_timeout(
    engine: LlamaEngine,
) -> None:
    with running_server(engine, limits=SHORT) as server:
        with connect(server) as silent, connect(server) as partial:
            partial.sendall(PARTIAL_HEAD)
            assert read_until_closed(partial) == b""
            assert read_until_closed(silent) == b""
        assert health(server) == 200


def test_a_head_trickled_a_byte_at_a_time_does_not_extend_its_deadline(
    engine: LlamaEngine,
) -> None:
    """The header timeout is a deadline for the whole head, not an idle timer that each byte
    restarts: the trickle is cut off although a byte arrives every 0.1 s."""
    import time

    with running_server(engine, limits=SHORT) as server, connect(server) as sock:
        sock.sendall(PARTIAL_HEAD)
        for _ in range(1200):  # 120 s of trickling at most; the deadline is 0.5 s
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        assert read_until_closed(sock) == b""


def test_a_body_that_stalls_is_closed_at_the_body_timeout(
    engine: LlamaEngine, capfd: pytest.CaptureFixture[str]
) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with running_server(engine, limits=SHORT) as server:
        with connect(server) as sock:
            sock.sendall(head + b'{"messages": [')
            assert read_until_closed(sock) == b""
        assert health(server) == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err, err


def test_over_the_cap_the_longest_idle_connection_makes_room(engine: LlamaEngine) -> None:
    limits = dataclasses.replace(PATIENT, max_connections=8)
    with running_server(engine, limits=limits) as server:
        idle = [connect(server) for _ in range(8)]
        try:
            for sock in idle:  # each answered once, then idle on keep-alive, oldest first
                assert health_on(sock) == 200
            assert health(server) == 200
            assert read_until_closed(idle[0]) == b""
            for sock in idle[1:]:
                assert health_on(sock) == 200
        finally:
            for sock in idle:
                sock.close()


def test_slowloris_connections_beyond_the_cap_do_not_keep_health_out(
    engine: LlamaEngine,
) -> None:
    """Three times the cap of connections hold half a request each: /health is still answered,
    the oldest of them are shed to make room, and the newest are still served."""
    cap = 8
    limits = dataclasses.replace(PATIENT, max_connections=cap)
    with running_server(engine, limits=limits) as server:
        attackers = [connect(server) for _ in range(3 * cap)]
        try:
            for sock in attackers:
                sock.sendall(PARTIAL_HEAD)
            assert health(server) == 200
            shed, kept = attackers[: len(attackers) - cap + 1], attackers[-cap + 1 :]
            for sock in shed:
                assert read_until_closed(sock) == b""
            for sock in kept:
                sock.sendall(b"1\r\n\r\n")
                assert read_response(sock) == 200
        finally:
            for sock in attackers:
                sock.close()


def test_malformed_requests_are_logged_a_few_times_not_once_each(
    engine: LlamaEngine, capfd: pytest.CaptureFixture[str]
) -> None:
    with running_server(engine) as server:
        for _ in range(50):
            with connect(server) as sock:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                read_until_closed(sock)
        assert health(server) == 200
    assert 1 <= capfd.readouterr().err.count("Invalid HTTP request") <= 10


EMFILE_CHILD = """
import socket, sys
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.server.app import ServedModel, create_app
from huozi_local.server.runner import base_url, bind_socket, make_server

engine = LlamaEngine.load(sys.argv[1], LoadOptions(n_ctx=512, seed=1))
server = make_server(create_app(ServedModel(engine, "tiny")), log_level="warning")
sock = bind_socket("127.0.0.1", 0)
print(base_url(sock), flush=True)
sys.stdin.readline()  # the connections are waiting in the backlog
hog = []
try:
    while True:  # something else takes the fds: accept() itself fails with EMFILE
        hog.append(socket.socket())
except OSError:
    for _ in range(8):  # what the event loop needs, and a few connections
        hog.pop().close()
server.run(sockets=[sock])
"""


def test_accepts_failing_for_want_of_fds_are_logged_a_few_times(tiny_models: TinyModels) -> None:
    """When the fds run out under the server (taken by something else, not its connections),
    asyncio's accept loop logs a traceback for each pending connection in one loop turn (on
    main: one per connection, up to 2048 a turn); rate-limited, a few."""
    model = tiny_models.get("merged", "q4_0", rig="chat")
    child = subprocess.Popen(
        [sys.executable, "-c", EMFILE_CHILD, str(model)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held: list[socket.socket] = []
    try:
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        url = urlsplit(child.stdout.readline().strip())
        address = (url.hostname or "", url.port or 0)
        held = [socket.create_connection(address, timeout=60) for _ in range(100)]
        child.stdin.write("go\n")
        child.stdin.flush()
        lines: list[str] = []
        for line in child.stderr:
            lines.append(line)
            if "out of system resource" in line:
                break
        child.send_signal(signal.SIGINT)
        _out, rest = child.communicate(timeout=60)
    finally:
        for sock in held:
            sock.close()
        if child.poll() is None:
            child.kill()
    err = "".join(lines) + rest
    assert 1 <= err.count("out of system resource") <= 10
    assert len(err.splitlines()) < 200


def test_the_limits_the_readme_documents_are_the_defaults() -> None:
    defaults = ConnectionLimits()
    assert (defaults.header_timeout, defaults.body_timeout, defaults.keep_alive_timeout) == (
        10.0,
        60.0,
        5,
    )
    assert (defaults.max_connections, FD_RESERVE) == (1000, 16)
    limiter = RateLimitFilter()
    assert (limiter.burst, limiter.window) == (5, 10.0)


def test_a_rate_limited_message_says_how_many_like_it_were_left_out() -> None:
    now = [0.0]
    limiter = RateLimitFilter(burst=2, window=10.0, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, message, (), None)

    passed = [limiter.filter(record("Invalid HTTP request received.")) for _ in range(5)]
    assert passed == [True, True, False, False, False]
    assert limiter.filter(record("another kind"))
    now[0] = 10.0
    later = record("Invalid HTTP request received.")
    assert limiter.filter(later)
    assert later.getMessage() == "Invalid HTTP request received. (3 more like this were not logged)"
