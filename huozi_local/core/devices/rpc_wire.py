"""llama.cpp's RPC framing, as much of it as a relay needs to know where messages end.

A request is `| cmd (1 byte) | size (8 bytes, LE) | payload (size bytes) |`; some commands are
answered with `| size (8 bytes, LE) | payload |`, the others are not answered at all. Which
ones, and how long each answer is, is fixed by ggml-rpc.cpp (llama.cpp vendored in
llama-cpp-python 0.3.36, protocol 7): a relay that knows this can tell a worker that is
silent because it owes nothing from one that owes a reply and does not give it, and a reply
from bytes that are no reply. A command missing here (a newer llama.cpp) is passed through
without those checks.

Pure stdlib, no llama.cpp.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

REQUEST_HEADER = struct.Struct("<BQ")
REPLY_HEADER = struct.Struct("<Q")

HELLO = 14
GET_TENSOR = 8
CONN_CAPS_SIZE = 24  # transport.h: RPC_CONN_CAPS_SIZE
_TENSOR_SIZE = 296  # sizeof(rpc_tensor)

NAMES = (
    "ALLOC_BUFFER GET_ALIGNMENT GET_MAX_SIZE BUFFER_GET_BASE FREE_BUFFER BUFFER_CLEAR SET_TENSOR "
    "SET_TENSOR_HASH GET_TENSOR COPY_TENSOR GRAPH_COMPUTE GET_DEVICE_MEMORY INIT_TENSOR "
    "GET_ALLOC_SIZE HELLO DEVICE_COUNT GRAPH_RECOMPUTE MEMSET_TENSOR"
).split()

# command -> size of its reply's payload; None: answered by a GET_TENSOR-sized reply
_REPLIES: dict[int, int | None] = {
    0: 16,  # ALLOC_BUFFER: remote_ptr, remote_size
    1: 8,  # GET_ALIGNMENT
    2: 8,  # GET_MAX_SIZE
    3: 8,  # BUFFER_GET_BASE
    7: 1,  # SET_TENSOR_HASH: result
    GET_TENSOR: None,  # the bytes asked for
    9: 1,  # COPY_TENSOR: result
    11: 16,  # GET_DEVICE_MEMORY: free, total
    13: 8,  # GET_ALLOC_SIZE
    HELLO: 4 + CONN_CAPS_SIZE,  # major, minor, patch, padding, conn_caps
    15: 4,  # DEVICE_COUNT
}
_NO_REPLY = frozenset({4, 5, 6, 10, 12, 16, 17})  # FREE_BUFFER ... MEMSET_TENSOR


def name(command: int) -> str:
    return NAMES[command] if 0 <= command < len(NAMES) else f"command {command}"


def is_known(command: int) -> bool:
    return command in _REPLIES or command in _NO_REPLY


def answered(command: int) -> bool:
    """Whether the worker answers `command` (False for the one-way ones)."""
    return command in _REPLIES


def needs_payload(command: int) -> bool:
    """Whether the reply's size is read from the request's payload (GET_TENSOR)."""
    return command in _REPLIES and _REPLIES[command] is None


@dataclass(frozen=True)
class Owed:
    """A reply the worker owes: for which command, and how many payload bytes it must have."""

    command: int
    size: int


def owed_reply(command: int, payload: bytes = b"") -> Owed:
    """The reply an answered `command` must get; `payload`: the request's, for GET_TENSOR
    (`| rpc_tensor | offset u64 | size u64 |`)."""
    expected = _REPLIES[command]
    if expected is None:
        (expected,) = struct.unpack_from("<Q", payload, _TENSOR_SIZE + 8)
    return Owed(command, expected)


class ReplyTracker:
    """The replies a worker owes on one connection, and where its bytes are in them.

    `expect` is told each answered request before it reaches the worker (by the thread that
    passes requests on); `feed` walks what the worker sends (the other thread). `untracked`:
    a command this module does not know went by, so nothing can be checked from then on.
    """

    def __init__(self) -> None:
        self._owed: deque[Owed] = deque()
        self._header = b""
        self._left = -1  # payload bytes of the current reply still to come; -1: in its header
        self._lock = threading.Lock()
        self.untracked = False

    def expect(self, owed: Owed) -> None:
        with self._lock:
            self._owed.append(owed)

    def untrack(self) -> None:
        with self._lock:
            self.untracked = True

    def head(self) -> Owed | None:
        """The reply the worker owes now, or None."""
        with self._lock:
            return self._owed[0] if self._owed and not self.untracked else None

    def feed(self, data: bytes) -> str | None:
        """What is wrong with these bytes as the next part of the replies owed, or None."""
        with self._lock:
            if self.untracked:
                return None
            pos = 0
            while pos < len(data):
                if not self._owed:
                    return "sent bytes that answer no request"
                if self._left < 0:
                    take = min(REPLY_HEADER.size - len(self._header), len(data) - pos)
                    self._header += data[pos : pos + take]
                    pos += take
                    if len(self._header) < REPLY_HEADER.size:
                        return None
                    (size,) = REPLY_HEADER.unpack(self._header)
                    if size != self._owed[0].size:
                        return f"sent a malformed reply to {name(self._owed[0].command)}"
                    self._header, self._left = b"", size
                take = min(self._left, len(data) - pos)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._owed.popleft()
                    self._left = -1
            return None


def pass_requests(
    source: socket.socket,
    send: Callable[[bytes], None],
    replies: ReplyTracker,
    *,
    tcp_only: bool = False,
) -> None:
    """Pass requests from `source` to `send` until `source` hangs up, telling `replies` what
    each one is owed before it goes. `tcp_only`: HELLOs advertise no transport upgrade (an
    RDMA connection would go around a relay). OSError from either side propagates."""
    while (header := _read(source, REQUEST_HEADER.size)) is not None:
        command, size = REQUEST_HEADER.unpack(header)
        if replies.untracked or not is_known(command):
            replies.untrack()
        elif command == HELLO or needs_payload(command):
            payload = _read(source, size)
            if payload is None:
                return
            if command == HELLO and tcp_only:
                payload = bytes(len(payload))
            replies.expect(owed_reply(command, payload))
            send(header + payload)
            continue
        elif answered(command):
            replies.expect(owed_reply(command))
        send(header)
        while size:
            data = source.recv(min(size, _CHUNK))
            if not data:
                return
            send(data)
            size -= len(data)


_CHUNK = 1 << 20


def _read(sock: socket.socket, n: int) -> bytes | None:
    """Exactly `n` bytes, or None when the peer hung up first."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
