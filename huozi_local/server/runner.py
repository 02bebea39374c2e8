"""Running the app under uvicorn: our own listening socket, Ctrl-C that stops generation, and
limits on slow and idle clients.

The socket is bound here, not by uvicorn, so a busy port or a bad address is one HuoziError line
(uvicorn would log and `sys.exit(1)`), and port 0 reports the port it actually got. uvicorn runs
our guarded h11 protocol on asyncio's own loop (see `connections`): the connection cap works in
the listening socket's accept(), which uvloop would bypass.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from huozi_local.core.errors import HuoziError
from huozi_local.server.connections import (
    ConnectionLimits,
    ConnectionTable,
    guarded_listener,
    guarded_protocol,
)
from huozi_local.server.log_limit import rate_limited_logs
from huozi_local.server.queue import GenerationQueue


def bind_socket(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise HuoziError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HuoziError(f"cannot listen on {host}: unknown address") from exc
    family, _type, _proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise HuoziError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class HuoziServer(uvicorn.Server):  # type: ignore[misc]
    """uvicorn's server whose first Ctrl-C also cancels the running generation, so a long reply
    does not hold the graceful shutdown until it finishes; it accepts through `connections` and
    rate-limits the log lines a peer can cause while it runs."""

    def __init__(
        self, config: uvicorn.Config, generation: GenerationQueue, connections: ConnectionTable
    ) -> None:
        super().__init__(config)
        self._generation = generation
        self.connections = connections

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        with rate_limited_logs():
            await super().serve(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is not None:
            sockets = [guarded_listener(sock, self.connections) for sock in sockets]
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._generation.cancel_all()
        super().handle_exit(sig, frame)


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (`kill`, systemd, docker stop) stops the server as Ctrl-C does.

    uvicorn shuts down gracefully on either signal and then raises it again under the handler
    it found: Python's default for SIGINT raises KeyboardInterrupt, which `serve` expects, but
    the default for SIGTERM kills the process (status 143, no closing line). Under this block
    SIGTERM raises KeyboardInterrupt too, before, during and after uvicorn's own handling."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; elsewhere there is none to set
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_server(
    app: Starlette, *, log_level: str = "info", limits: ConnectionLimits | None = None
) -> HuoziServer:
    """`limits` None: the defaults (see `ConnectionLimits`), the cap fitted to the fd limit
    as it stands now, after the model is loaded."""
    limits = limits or ConnectionLimits()
    connections = ConnectionTable(limits.connection_cap())
    config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        lifespan="on",
        http=guarded_protocol(connections, limits),
        loop="asyncio",
        timeout_keep_alive=limits.keep_alive_timeout,
    )
    generation: GenerationQueue = app.state.generation_queue
    return HuoziServer(config, generation, connections)
