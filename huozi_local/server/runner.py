"""Running the app under uvicorn: our own listening socket, and Ctrl-C that stops generation.

The socket is bound here, not by uvicorn, so a busy port or a bad address is one HuoziError line
(uvicorn would log and `sys.exit(1)`), and port 0 reports the port it actually got.
"""

from __future__ import annotations

import ipaddress
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from huozi_local.core.errors import HuoziError
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
    does not hold the graceful shutdown until it finishes."""

    def __init__(self, config: uvicorn.Config, generation: GenerationQueue) -> None:
        super().__init__(config)
        self._generation = generation

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._generation.cancel_all()
        super().handle_exit(sig, frame)


def make_server(app: Starlette, *, log_level: str = "info") -> HuoziServer:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    generation: GenerationQueue = app.state.generation_queue
    return HuoziServer(config, generation)
