"""What every request must be before it reaches the API: for this host, JSON, not too big.

The server listens on loopback without a key by default, which any web page the user opens could
otherwise drive: a `text/plain` POST needs no CORS preflight, and a DNS name an attacker points at
127.0.0.1 (DNS rebinding) makes the browser treat the answers as same-origin and read them. So:

- without an API key, the Host header must name the address the server is bound to, a localhost
  name, or (when bound to every interface) an IP address: a rebinding attack always arrives under
  its own DNS name (with a key it gets 401 anyway, so a keyed server answers any name);
- a POST must say `Content-Type: application/json`, which a page cannot send cross-site without a
  preflight, and this server answers no preflight unless `--cors ORIGIN` asks it to;
- a body larger than `max_body_bytes` is refused with 413 before it is read (by its
  Content-Length) or as soon as it passes the limit (chunked): a 30 MB body used to take 11 s and
  788 MB of memory in the JSON parser.

A pure ASGI middleware rather than a Starlette `BaseHTTPMiddleware`, so a streamed reply passes
through untouched and the checks cost one header lookup each.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from huozi_local.server.schemas import APIError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than this server accepts ({limit} bytes)",
            code="request_too_large",
        )


class HostPolicy:
    """Which Host header values a server bound to `bind_host` answers.

    Addresses are read as the bind reads them (getaddrinfo, numeric only): `--host 0` binds
    every interface, as `0.0.0.0` does, so it must also be a wildcard here; read as a name it
    bound everywhere and then refused every LAN address. A numeric form is never a rebinding
    attacker's DNS name, so reading Host values the same way opens nothing."""

    def __init__(self, bind_host: str) -> None:
        self.bind_host = _bare(bind_host)
        self.bind_address = _numeric_address(self.bind_host)
        self.wildcard = self.bind_host in WILDCARDS or (
            self.bind_address is not None and self.bind_address.is_unspecified
        )

    def allows(self, header: str) -> bool:
        name = _bare(_strip_port(header))
        if name in LOCAL_NAMES or name == self.bind_host or name.endswith(".localhost"):
            return True
        address = _numeric_address(name)
        if address is None:
            return False
        return self.wildcard or address == self.bind_address


class RequestGuard:
    """ASGI middleware applying the Host, Content-Type and body-size rules above."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: HostPolicy | None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        """`hosts` None: any Host is answered (a server that requires an API key)."""
        self.app = app
        self.hosts = hosts
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host")
        if host is not None and self.hosts is not None and not self.hosts.allows(host):
            message = (
                f"this server does not answer for host '{_printable(host)}' (it protects itself "
                "from DNS rebinding): use its address or localhost, or start it with --api-key"
            )
            await _refuse(send, 400, message, code="invalid_host")
            return
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                message = "requests must be sent with 'Content-Type: application/json'"
                await _refuse(send, 415, message, code="unsupported_media_type")
                return
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                refused = BodyTooLarge(self.max_body_bytes)
                await _refuse(send, 413, refused.message, code=refused.code)
                return
            receive = _limited(receive, self.max_body_bytes)
        await self.app(scope, receive, send)


def _limited(receive: Receive, limit: int) -> Receive:
    """A `receive` that raises BodyTooLarge once more than `limit` bytes arrived (chunked)."""
    seen = 0

    async def limited_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return limited_receive


async def _refuse(send: Send, status: int, message: str, *, code: str | None) -> None:
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _headers(scope: Scope) -> dict[str, str]:
    return {
        key.decode("latin-1").lower(): value.decode("latin-1")
        for key, value in scope.get("headers", [])
    }


def _strip_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _bare(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")


def _numeric_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`name` as an IP address if it is one in any form the C library takes ("0", "127.1"),
    never looked up in DNS."""
    if not name:
        return None
    try:
        infos = socket.getaddrinfo(name, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):  # a name, or bytes no address has
        return None
    return ipaddress.ip_address(str(infos[0][4][0]).split("%")[0])


def _printable(text: str) -> str:
    shown = text.encode("ascii", "backslashreplace").decode()
    return shown if len(shown) <= 80 else shown[:80] + "…"
