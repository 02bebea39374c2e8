"""`huozi-local worker`'s front door: one client at a time, and an idle one gives way.

llama.cpp's RPC server (`ggml_backend_rpc_start_server`) accepts one connection, serves it until
it closes, then accepts the next; it waits in recv() with no timeout and listens with a backlog
of 1. A client that connects and then says nothing (a forgotten `nc`, a chat left open, a
machine that lost power with its connection still up) keeps every other client out for good,
and the C loop has no hook to change that. So the server listens on a private loopback port
and this front listens on the worker's address and passes one client through at a time.

When another client is waiting and the one being served is idle (owes nothing, is owed no
reply, and nothing has gone either way for `idle_timeout` seconds: framing from `rpc_wire`),
the front hangs up on it; the server then frees what that client allocated (its `rpc_server`
is destroyed with the connection) and the next client is passed through. Nobody is cut off
while nobody waits, however long they idle, nor while a reply is on its way.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from huozi_local.core.devices import rpc_wire
from huozi_local.core.devices.endpoints import Endpoint

_CHUNK = 1 << 20
_TICK_S = 0.1


class WorkerFront:
    """Passes clients of `listener` to the server at `backend`, one at a time."""

    def __init__(
        self,
        listener: socket.socket,
        backend: Endpoint,
        idle_timeout: float,
        on_shed: Callable[[float], None] | None = None,
    ) -> None:
        self._listener = listener
        self._backend = backend
        self.idle_timeout = idle_timeout  # 0: never hang up on anyone
        self._on_shed = on_shed
        self._waiting: deque[socket.socket] = deque()
        self._changed = threading.Condition()

    def serve_forever(self) -> None:
        threading.Thread(target=self._accept, name="huozi-worker-accept", daemon=True).start()
        while True:
            self._serve(self._next_client())

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._changed:
                self._waiting.append(client)
                self._changed.notify_all()

    def _next_client(self) -> socket.socket:
        with self._changed:
            while True:
                self._drop_departed()
                if self._waiting:
                    return self._waiting.popleft()
                self._changed.wait()

    def _drop_departed(self) -> None:
        """Forget waiting clients that gave up (a probe waits a few seconds, then leaves)."""
        for client in [c for c in self._waiting if _hung_up(c)]:
            self._waiting.remove(client)
            client.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection((self._backend.host, self._backend.port), 30)
        except OSError:
            client.close()
            return
        server.settimeout(None)  # the 30 s were for connecting: a client may idle for hours
        for sock in (client, server):  # a request or a reply is often one small message:
            with contextlib.suppress(OSError):  # Nagle would hold it for the peer's delayed ACK
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, server, self._changed)
        link.start()
        with self._changed:
            while not link.done.is_set():
                self._changed.wait(_TICK_S)
                self._drop_departed()
                idle = link.idle_for()
                if self._waiting and self.idle_timeout > 0 and idle >= self.idle_timeout:
                    link.hang_up()
                    if self._on_shed is not None:
                        self._on_shed(idle)
                    break
        link.done.wait()


class _Link:
    """One client and its server connection, and how long they have had nothing to do."""

    def __init__(
        self, client: socket.socket, server: socket.socket, changed: threading.Condition
    ) -> None:
        self.client = client
        self.server = server
        self.replies = rpc_wire.ReplyTracker()
        self.last = time.monotonic()  # the last byte either way
        self.done = threading.Event()
        self._changed = changed
        self._ends = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._requests, name="huozi-worker-in", daemon=True).start()
        threading.Thread(target=self._replies, name="huozi-worker-out", daemon=True).start()

    def idle_for(self) -> float:
        """Seconds since the last byte, or 0 while the server owes a reply."""
        if self.replies.head() is not None:
            return 0.0
        with self._lock:
            return time.monotonic() - self.last

    def hang_up(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _touch(self) -> None:
        with self._lock:
            self.last = time.monotonic()

    def _to_server(self, data: bytes) -> None:
        self._touch()
        self.server.sendall(data)

    def _requests(self) -> None:
        with contextlib.suppress(OSError):
            rpc_wire.pass_requests(self.client, self._to_server, self.replies)
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_WR)
        self._end()

    def _replies(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.server.recv(_CHUNK):
                self._touch()
                if self.replies.feed(data) is not None:
                    self.replies.untrack()  # our own server: trust it, stop counting
                self.client.sendall(data)
        with contextlib.suppress(OSError):  # the server is done with this client: so are we
            self.client.shutdown(socket.SHUT_RDWR)
        self._end()

    def _end(self) -> None:
        with self._lock:
            self._ends += 1
            finished = self._ends == 2
        if finished:
            self.client.close()
            self.server.close()
            self.done.set()
            with self._changed:
                self._changed.notify_all()


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer of a socket nobody reads yet has closed its end."""
    rdhup = getattr(select, "POLLRDHUP", None)
    if rdhup is not None and hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, rdhup | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))
    try:  # elsewhere: only a peer that closed before sending anything is seen
        sock.setblocking(False)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(True)
