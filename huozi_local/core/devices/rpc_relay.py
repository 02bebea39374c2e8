"""A relay in this process between llama.cpp's RPC client and each worker: deadlines.

llama.cpp's RPC client has none: it blocks in recv() for as long as a worker keeps the
connection open, so a worker that accepts and then says nothing hangs the process for good
(and Ctrl-C cannot reach a thread blocked in C). Its sockets are not ours to configure either:
ggml opens a new connection whenever the previous one was dropped (every registration query
has its own). So ggml is given `127.0.0.1:PORT` of a relay here instead of the worker, and the
relay, which opens each real connection itself, knows the framing (`rpc_wire`) and holds the
worker to a deadline: a reply owed and no byte of it for `timeout` seconds, a request the
worker stops reading for as long, a reply of the wrong size, bytes nobody asked for, a hang-up
while a reply is owed. On any of them it records why and cuts ggml's side of the connection:
llama.cpp fails at once on its own check ("Remote RPC server crashed"), which `rpc_guard`
turns into one line. A worker that is silent because it owes nothing is never timed out.

The deadline is generous (the longest silence a healthy worker keeps is one batch of prompt
tokens computed on a slow device) and comes from `HUOZI_RPC_TIMEOUT` (seconds).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time

from huozi_local.core.devices import rpc_wire
from huozi_local.core.devices.endpoints import Endpoint
from huozi_local.core.errors import HuoziError

DEFAULT_TIMEOUT_S = 120.0
TIMEOUT_ENV = "HUOZI_RPC_TIMEOUT"
_CHUNK = 1 << 20


def rpc_timeout() -> float:
    """Seconds a worker may owe a reply without sending a byte of it (`HUOZI_RPC_TIMEOUT`)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise HuoziError(f"{TIMEOUT_ENV}='{text}' is not a number of seconds above 0")
    return value


class _Failed(Exception):
    """The link was cut (the reason is recorded); its threads end."""


class WorkerRelay:
    """Listens on 127.0.0.1 for ggml's connections to one worker; one `_Link` each."""

    def __init__(self, worker: Endpoint, timeout: float) -> None:
        self.worker = worker
        self.timeout = timeout
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("127.0.0.1", int(self._listener.getsockname()[1]))
        threading.Thread(target=self._accept, name="huozi-rpc-relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(self, client)
            threading.Thread(target=link.run, name="huozi-rpc-requests", daemon=True).start()


_failures: list[str] = []
_relays: dict[Endpoint, WorkerRelay] = {}
_lock = threading.Lock()


def relay_for(worker: Endpoint) -> WorkerRelay:
    """The relay to `worker` (one per process: ggml's registry keeps the address for good)."""
    with _lock:
        relay = _relays.get(worker)
    if relay is None:
        relay = WorkerRelay(worker, rpc_timeout())
        with _lock:
            relay = _relays.setdefault(worker, relay)
    return relay


def worker_behind(address: str) -> str:
    """The worker a relay address ("127.0.0.1:PORT", as ggml names a device) stands for."""
    with _lock:
        for worker, relay in _relays.items():
            if str(relay.endpoint) == address:
                return str(worker)
    return address


def last_failure() -> str | None:
    """Why the relay last cut a connection ("10.0.0.2:50052 did not answer within 120 s")."""
    with _lock:
        return _failures[-1] if _failures else None


def _record(why: str) -> None:
    with _lock:
        _failures.append(why)


class _Link:
    """One ggml connection and its worker connection: requests one way, replies the other."""

    def __init__(self, relay: WorkerRelay, client: socket.socket) -> None:
        self.relay = relay
        self.client = client
        self.worker: socket.socket | None = None
        self.tick = min(1.0, relay.timeout / 4)
        self.replies = rpc_wire.ReplyTracker()
        self.since = time.monotonic()  # the last byte either way: a reply is owed from then
        self.lock = threading.Lock()
        self.client_done = False
        self.cut = False

    def run(self) -> None:
        worker = self.relay.worker
        try:
            self.worker = socket.create_connection(
                (worker.host, worker.port), timeout=self.relay.timeout
            )
        except OSError as exc:
            with contextlib.suppress(_Failed):
                self._fail(f"{worker} is not reachable ({exc.strerror or exc})")
            return
        for sock in (self.worker, self.client):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.worker.settimeout(self.tick)
        threading.Thread(target=self._replies, name="huozi-rpc-replies", daemon=True).start()
        with contextlib.suppress(_Failed):
            try:
                rpc_wire.pass_requests(self.client, self._send, self.replies, tcp_only=True)
            except OSError:
                pass  # ggml's side went away
            with self.lock:
                self.client_done = True
            with contextlib.suppress(OSError):
                self.worker.shutdown(socket.SHUT_WR)

    def _fail(self, why: str) -> None:
        with self.lock:
            first, self.cut = not self.cut, True
        if first:
            _record(f"{self.relay.worker} {why}")
            for sock in (self.client, self.worker):
                if sock is not None:  # shutdown wakes a thread blocked in recv; close() does not
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
        raise _Failed(why)

    def _send(self, data: bytes) -> None:
        """To the worker, which must take some of it at least every `timeout` seconds."""
        assert self.worker is not None
        view = memoryview(data)
        progress = time.monotonic()
        while view:
            try:
                sent = self.worker.send(view)
            except TimeoutError:
                if time.monotonic() - progress > self.relay.timeout:
                    self._fail(f"took no request for {self.relay.timeout:g} s")
                continue
            except OSError as exc:
                self._fail(f"dropped the connection ({exc.strerror or exc})")
            view = view[sent:]
            progress = time.monotonic()
            with self.lock:
                self.since = progress

    def _replies(self) -> None:
        with contextlib.suppress(_Failed):
            while data := self._receive():
                problem = self.replies.feed(data)
                if problem is not None:
                    self._fail(problem)
                try:
                    self.client.sendall(data)
                except OSError:
                    return  # ggml's side is gone

    def _receive(self) -> bytes:
        """The worker's next bytes; b"" when the link ends normally (ggml hung up first)."""
        assert self.worker is not None
        while True:
            try:
                data = self.worker.recv(_CHUNK)
            except TimeoutError:
                owed = self.replies.head()
                with self.lock:
                    waited = time.monotonic() - self.since
                if owed is not None and waited > self.relay.timeout:
                    command = rpc_wire.name(owed.command)
                    self._fail(f"did not answer {command} within {self.relay.timeout:g} s")
                continue
            except OSError as exc:
                if self._ended():
                    return b""
                self._fail(f"dropped the connection ({exc.strerror or exc})")
            if data:
                with self.lock:
                    self.since = time.monotonic()
                return data
            if self._ended():
                with contextlib.suppress(OSError):
                    self.client.shutdown(socket.SHUT_WR)
                return b""
            self._fail("closed the connection")

    def _ended(self) -> bool:
        with self.lock:
            return self.client_done or self.cut
