"""RPC worker addresses: parsing `--rpc HOST:PORT[,HOST:PORT]` and checking a worker answers.

llama.cpp's RPC client aborts the whole process (GGML_ABORT) when it cannot connect or the
handshake fails, so every endpoint is checked here first, in Python, with the same HELLO the
client sends: a wrong address or a busy worker becomes one clear line instead of a core dump.
Pure stdlib: `--help` and the planner import this without loading llama.cpp.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from huozi_local.core.errors import HuoziError

DEFAULT_WORKER_PORT = 50052
RPC_PROTO_MAJOR = 7  # ggml-rpc.h of the llama.cpp bundled with llama-cpp-python 0.3.36
_RPC_CMD_HELLO = 14  # "RPC_CMD_HELLO must be always 14"
_CONN_CAPS_SIZE = 24  # transport.h: RPC_CONN_CAPS_SIZE
_HELLO_REPLY_SIZE = 4 + _CONN_CAPS_SIZE  # major, minor, patch, padding, caps


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_endpoint(text: str) -> Endpoint:
    """'HOST:PORT' (IPv6 as '[::1]:50052'); HuoziError in one line otherwise."""
    cleaned = text.strip()
    host, sep, port_text = cleaned.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HuoziError(
            f"'{text}' is not an RPC worker address (use HOST:PORT, e.g. 10.0.0.2:50052)"
        )
    return Endpoint(host, int(port_text))


def parse_endpoints(text: str | None) -> tuple[Endpoint, ...]:
    """`--rpc` as written: comma-separated HOST:PORT, each once."""
    if not text:
        return ()
    endpoints: list[Endpoint] = []
    for part in text.split(","):
        if not part.strip():
            continue
        endpoint = parse_endpoint(part)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return tuple(endpoints)


def probe_worker(endpoint: Endpoint, timeout: float = 5.0) -> tuple[int, int, int]:
    """The worker's RPC protocol version, by the client's own HELLO; HuoziError when it fails.

    The worker serves one client at a time: while another app uses it, the connection is
    accepted by the kernel but nobody answers, which times out here.
    """
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError as exc:
        raise HuoziError(
            f"no RPC worker answers at {endpoint} ({exc.strerror or exc}); start one there with "
            f"`huozi-local worker --host HOST --port {endpoint.port}`"
        ) from None
    try:
        with sock:
            sock.settimeout(timeout)
            sock.sendall(
                struct.pack("<BQ", _RPC_CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE)
            )
            reply = _receive(sock, 8 + _HELLO_REPLY_SIZE)
    except TimeoutError:
        raise HuoziError(
            f"the RPC worker at {endpoint} does not answer (is it serving another client?)"
        ) from None
    except OSError as exc:
        raise HuoziError(f"the RPC worker at {endpoint} hung up: {exc}") from None
    (size,) = struct.unpack_from("<Q", reply)
    if size != _HELLO_REPLY_SIZE:
        raise HuoziError(f"{endpoint} does not speak llama.cpp's RPC protocol")
    major, minor, patch = reply[8], reply[9], reply[10]
    if major != RPC_PROTO_MAJOR:
        raise HuoziError(
            f"the RPC worker at {endpoint} speaks protocol {major}.{minor}.{patch}, this build "
            f"speaks {RPC_PROTO_MAJOR}.x: run the same huozi-local version on both machines"
        )
    return major, minor, patch


def _receive(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed during the handshake")
        data += chunk
    return data
