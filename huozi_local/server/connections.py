"""Slow and idle clients cannot take the server away from everyone else.

uvicorn (read in 0.55; the same since 0.30, h11 and httptools alike) arms a timer only once a
response is complete, for keep-alive, and cancels it on the next byte: a connection that sends
part of a request line, part of its headers or part of its body and then waits is kept forever.
`limit_concurrency` does not help: it answers 503 to every new request once that many connections
are open, which hands the server to whoever opens them. Each such connection holds a file
descriptor; at the fd limit asyncio's accept loop (CPython 3.11) keeps calling accept() after
EMFILE, up to `backlog` (2048) times a wake, logging a traceback each time: /health was never
accepted and stderr grew by 64 MB in 12 s.

So, around uvicorn's own h11 protocol:

- a request's head must arrive within `header_timeout` of the server starting to wait for it,
  and its body within `body_timeout` of the head. Both are deadlines, not idle timers, so a
  client trickling a byte at a time cannot extend them;
- at most `max_connections` are open, and never more than the fd limit leaves room for. A new
  connection over the cap takes the place of the one that has waited longest for a request
  (none of its requests in progress), so held connections make room for everyone else's; only
  when every connection has a request in progress is a newcomer turned away.

The cap is kept where connections are accepted, the listening socket's `accept()`, because
asyncio accepts every pending connection in one go before any protocol hears of them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

FD_RESERVE = 16
"""File descriptors left for what the server opens besides connections (logs, the cache)."""
MIN_CONNECTIONS = 4
SHED_SHARE = 8
"""At most cap/SHED_SHARE connections are shed a loop turn (see `ConnectionTable.admit`)."""

Accept = Callable[[], tuple[socket.socket, Any]]


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    """Seconds from when the server starts waiting for a request (a new connection, or the end
    of the previous answer) until its head (request line and headers) must be complete."""
    body_timeout: float = 60.0
    """Seconds from the end of a request's head until its body must be complete."""
    keep_alive_timeout: int = 5
    """Seconds an idle connection stays open after an answer (uvicorn's own timer)."""
    max_connections: int = 1000
    """Open connections at most; fewer when the fd limit (`ulimit -n`) leaves less room."""

    def connection_cap(self) -> int:
        room = fd_room()
        cap = self.max_connections if room is None else min(self.max_connections, room)
        return max(MIN_CONNECTIONS, cap)


def fd_room() -> int | None:
    """How many more files this process may open, less a reserve; None where there is no limit
    (or no way to know it: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - _fds_in_use() - FD_RESERVE


def _fds_in_use() -> int:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return sum(1 for _ in Path(folder).iterdir())
        except OSError:
            continue
    return FD_RESERVE


class ConnectionTable:
    """One server's connections: how many are open, and which have waited longest for a
    request (the first to go when a new one needs room)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.sheds_per_turn = max(1, cap // SHED_SHARE)
        self._shed_this_turn = 0
        self._accepted: dict[int, socket.socket] = {}
        """Accepted sockets whose protocol has not started yet, by fd."""
        self._open: dict[GuardedH11Protocol, socket.socket | None] = {}
        self._idle: dict[GuardedH11Protocol, None] = {}
        """Connections with no request in progress, in the order they became so."""

    def open_count(self) -> int:
        if len(self._accepted) + len(self._open) >= self.cap:
            # A socket asyncio failed to wrap is closed by it and never reaches `attach`.
            self._accepted = {fd: s for fd, s in self._accepted.items() if s.fileno() != -1}
        return len(self._accepted) + len(self._open)

    def admit(self, accept: Accept) -> tuple[socket.socket, Any]:
        """The listening socket's accept(), kept within the cap.

        At the cap, a new connection sheds the longest idle one. With none idle but some just
        accepted, this waits a loop turn (BlockingIOError) for them to start and show whether
        they are idle; with every connection busy, the newcomer is closed at once.

        At most `sheds_per_turn` are shed in one loop turn: asyncio accepts up to `backlog`
        connections a turn, and an attacker who reconnects as fast as it is shed would
        otherwise push out a client's new connection before its request is read."""
        if self.open_count() >= self.cap and not self._idle:
            if self._accepted:
                raise BlockingIOError
            conn, _address = accept()
            conn.close()
            raise ConnectionAbortedError  # asyncio's accept loop takes this as "no more now"
        full = self.open_count() >= self.cap
        if full and self._shed_this_turn >= self.sheds_per_turn:
            raise BlockingIOError  # the rest next turn, once the open ones have been read
        conn, address = accept()
        if full:
            self.shed_oldest_idle()
            if not self._shed_this_turn:
                asyncio.get_running_loop().call_soon(self._next_turn)
            self._shed_this_turn += 1
        self._accepted[conn.fileno()] = conn
        return conn, address

    def _next_turn(self) -> None:
        self._shed_this_turn = 0

    def attach(self, protocol: GuardedH11Protocol, transport: asyncio.BaseTransport) -> None:
        raw = transport.get_extra_info("socket")
        sock = self._accepted.pop(raw.fileno(), None) if raw is not None else None
        self._open[protocol] = sock
        if sock is None and self.open_count() > self.cap and self._idle:
            # Accepted elsewhere than `admit` (a proactor loop): shed after the fact.
            self.shed_oldest_idle()

    def detach(self, protocol: GuardedH11Protocol) -> None:
        self._open.pop(protocol, None)
        self._idle.pop(protocol, None)

    def mark(self, protocol: GuardedH11Protocol, *, idle: bool) -> None:
        if not idle:
            self._idle.pop(protocol, None)
        elif protocol not in self._idle and protocol in self._open:
            self._idle[protocol] = None

    def shed_oldest_idle(self) -> None:
        protocol = next(iter(self._idle))
        del self._idle[protocol]
        sock = self._open.pop(protocol, None)
        protocol.shed()
        if sock is not None:
            # The transport would close it on the next loop turn; the fd is needed now.
            sock.close()


def guarded_listener(sock: socket.socket, table: ConnectionTable) -> socket.socket:
    """A second handle on the listening socket whose accept() goes through `table`
    (socket.dup, not os.dup: Windows sockets are no C file descriptors)."""
    listener = _Listener(sock.family, sock.type, sock.proto, fileno=sock.dup().detach())
    listener.table = table
    return listener


class _Listener(socket.socket):
    table: ConnectionTable

    def accept(self) -> tuple[socket.socket, Any]:
        return self.table.admit(super().accept)


class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
    """uvicorn's h11 protocol with read deadlines and a place in a `ConnectionTable`.

    Phases come from h11's view of the client (IDLE: waiting for a head, SEND_BODY: sending the
    body); a connection is idle while none of its requests is being answered."""

    table: ClassVar[ConnectionTable]
    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: type[h11.IDLE] | type[h11.SEND_BODY] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.table.attach(self, transport)
        self._track()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        self.table.detach(self)
        super().connection_lost(exc)

    def shed(self) -> None:
        self._set_deadline(None)
        self.transport.abort()

    def _track(self) -> None:
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        phase = state if state in (h11.IDLE, h11.SEND_BODY) else None
        if phase is not self._phase:
            self._phase = phase
            if phase is h11.IDLE:
                self._set_deadline(self.limits.header_timeout)
            elif phase is h11.SEND_BODY:
                self._set_deadline(self.limits.body_timeout)
            else:
                self._set_deadline(None)
        answering = self.cycle is not None and not self.cycle.response_complete
        self.table.mark(self, idle=not answering)

    def _set_deadline(self, seconds: float | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if seconds is not None:
            self._deadline = self.loop.call_later(seconds, self._read_timed_out)

    def _read_timed_out(self) -> None:
        """Abort, not close: close() would wait to flush what a client that stopped reading
        never takes."""
        self._deadline = None
        self.transport.abort()


def guarded_protocol(table: ConnectionTable, limits: ConnectionLimits) -> type[H11Protocol]:
    """The protocol class uvicorn builds for each connection of one server."""
    return type("ServerH11Protocol", (GuardedH11Protocol,), {"table": table, "limits": limits})
