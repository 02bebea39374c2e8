"""RPC workers that misbehave on purpose: a relay in front of a real `huozi-local worker`.

A worker can fail in ways a dead one does not: it can accept a client and then never answer,
hang up in the middle of a load, or send bytes that are not a reply. `FaultyWorker` passes
llama.cpp's RPC traffic through to a real worker (`RpcWorker`) and, at the n-th time a client
sends a chosen command, stops passing it on and does the fault instead. Choosing the command
chooses the phase: `DEVICE_COUNT` is registration (the first command after the HELLO),
`ALLOC_BUFFER` or `SET_TENSOR` the load, `GRAPH_RECOMPUTE` the middle of a reply.

Requests are framed `| cmd (1 byte) | size (8 bytes, LE) | payload |` (ggml-rpc.cpp), so the
relay counts commands without knowing what they mean; replies pass through untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType
from typing import Literal

from huozi_local.core.devices.endpoints import Endpoint

Fault = Literal["stall", "close", "garbage"]

# ggml-rpc.cpp: enum rpc_cmd (RPC_CMD_HELLO must be 14)
ALLOC_BUFFER = 0
SET_TENSOR = 6
GET_TENSOR = 8
GRAPH_COMPUTE = 10
GET_DEVICE_MEMORY = 11
HELLO = 14
DEVICE_COUNT = 15
GRAPH_RECOMPUTE = 16


class FaultyWorker:
    """A relay on 127.0.0.1 that forwards to `target` until the n-th `command`, then `fault`s:
    `stall` (keeps the connection open and silent), `close` (hangs up), `garbage` (answers
    bytes that are no reply, then stays silent). `triggered` is set once the fault happened."""

    def __init__(self, target: Endpoint, fault: Fault, command: int, nth: int = 1) -> None:
        self._target = target
        self._fault = fault
        self._command = command
        self._left = nth
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = Endpoint("127.0.0.1", int(self._listener.getsockname()[1]))
        self.triggered = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                worker = socket.create_connection((self._target.host, self._target.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, worker]
            threading.Thread(target=self._requests, args=(client, worker), daemon=True).start()
            threading.Thread(target=self._replies, args=(worker, client), daemon=True).start()

    def _requests(self, client: socket.socket, worker: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                header = _receive(client, 9)
                if header is None:
                    break
                command, size = struct.unpack("<BQ", header)
                if self._fires(command):
                    self._misbehave(client, worker)
                    return
                worker.sendall(header)
                left = size
                while left:
                    data = client.recv(min(left, 1 << 20))
                    if not data:
                        return
                    worker.sendall(data)
                    left -= len(data)
        with contextlib.suppress(OSError):
            worker.shutdown(socket.SHUT_WR)

    def _replies(self, worker: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := worker.recv(1 << 20):
                if self.triggered.is_set():
                    return  # nothing reaches the client after the fault
                client.sendall(data)
            if not self.triggered.is_set():
                client.shutdown(socket.SHUT_WR)

    def _fires(self, command: int) -> bool:
        with self._lock:
            if command != self._command or self.triggered.is_set():
                return False
            self._left -= 1
            if self._left > 0:
                return False
            self.triggered.set()
            return True

    def _misbehave(self, client: socket.socket, worker: socket.socket) -> None:
        if self._fault == "close":
            for sock in (client, worker):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        elif self._fault == "garbage":
            # a reply size no request ever has, then bytes: llama.cpp reads it as a reply
            client.sendall(struct.pack("<Q", 0xA5A5_A5A5_A5A5) + b"\xa5" * 56)
        # "stall" (and garbage after its bytes): keep both open and say nothing more

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:  # shutdown first: close() wakes no thread blocked in recv
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def __enter__(self) -> FaultyWorker:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()


def _receive(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
