"""A fake Hugging Face hub on 127.0.0.1, spoken to by the real huggingface_hub client.

It serves the part of the protocol that huggingface_hub (2.x) and our downloader use:

- `HEAD|GET /{owner}/{repo}/resolve/{revision}/{filename}`: for an LFS file, a 302 to the "CDN"
  (a second listener on another port, so the client treats it as a foreign host exactly as it
  treats the real hub's CDN and stops following there), with X-Linked-Etag, X-Linked-Size,
  X-Repo-Commit and ETag; for a small (non-LFS) file, the bytes directly.
- `HEAD|GET /lfs/{sha256}` on the CDN: the bytes, with Range (206 + Content-Range) support.
- `GET /api/models/{owner}/{repo}[/revision/{rev}]` (`?blobs=true` adds sizes and LFS sha256).
- 404 with `X-Error-Code: RepoNotFound` / `EntryNotFound`, 401 `GatedRepo` for gated repos.

No xet headers are ever sent, so hf_xet never kicks in. Knobs let a test cut the connection after
N bytes, serve corrupt bytes, require a token, ignore Range, answer 429, cap each connection's
rate (a mirror's per-connection cap) or stall mid-file; every request is recorded (method, path,
Range header, status, body bytes sent) so tests can assert what the client did and did not do.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_THRESHOLD = 1024  # files at least this big are served as LFS objects, like the real hub


@dataclass
class HubFile:
    """One file in a fake repo: bytes in memory or a path on disk (for big benchmark files)."""

    filename: str
    data: bytes | None = None
    path: Path | None = None
    sha256: str = ""
    size: int = 0

    @property
    def is_lfs(self) -> bool:
        return self.size >= LFS_THRESHOLD

    @property
    def git_blob_id(self) -> str:
        return hashlib.sha1(f"blob:{self.filename}:{self.sha256}".encode()).hexdigest()


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    status: int = 0
    body_bytes: int = 0
    authorization: str | None = None


@dataclass
class FakeHub:
    """State shared by the hub and CDN listeners; tweak the knobs between requests."""

    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    gated: dict[str, str] = field(default_factory=dict)  # repo_id -> the token that opens it
    cut_after_bytes: int | None = None  # the next file body stops after this many bytes
    cut_times: int = 1  # how many responses get cut before the knob clears itself
    corrupt: bool = False  # flip a byte in every file body served
    ignore_range: bool = False  # answer ranged requests with the whole file (200), as some do
    busy_times: int = 0  # answer the next N ranged requests with 429 Too Many Requests
    busy_from: int = 0  # ... those that start at or after this byte
    bytes_per_s: float | None = None  # cap each connection's body at this rate (a mirror's cap)
    stall_after_bytes: int | None = None  # stop sending (and hold the connection) once this many
    # body bytes went out in all: a download that hangs mid-way, to be killed at a known point;
    # clearing the knob drops the held connections
    records: list[RequestRecord] = field(default_factory=list)
    hub_url: str = ""
    cdn_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0
    sending: int = 0  # file bodies being sent right now
    most_at_once: int = 0  # the most file bodies ever sent at the same time

    def add_file(self, repo_id: str, filename: str, content: bytes | Path) -> HubFile:
        if isinstance(content, Path):
            digest = hashlib.sha256()
            with open(content, "rb") as handle:
                while block := handle.read(8 << 20):
                    digest.update(block)
            entry = HubFile(
                filename, path=content, sha256=digest.hexdigest(), size=content.stat().st_size
            )
        else:
            entry = HubFile(
                filename,
                data=content,
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
            )
        self.repos.setdefault(repo_id, {})[filename] = entry
        return entry

    def resolve_url(self, repo_id: str, filename: str, revision: str = "main") -> str:
        return f"{self.hub_url}/{repo_id}/resolve/{revision}/{filename}"

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self.records.append(entry)

    def requests_for(self, method: str | None = None, path_part: str = "") -> list[RequestRecord]:
        with self._lock:
            return [
                r
                for r in self.records
                if (method is None or r.method == method) and path_part in r.path
            ]

    def body_bytes_sent(self, path_part: str = "/lfs/") -> int:
        return sum(r.body_bytes for r in self.requests_for(None, path_part))

    def count_sent(self, n: int) -> None:
        with self._lock:
            self._sent += n

    def sent_so_far(self) -> int:
        """Body bytes written so far, finished responses or not (paced ones only)."""
        with self._lock:
            return self._sent

    def take_busy(self) -> bool:
        with self._lock:
            if self.busy_times <= 0:
                return False
            self.busy_times -= 1
            return True

    def take_cut(self) -> int | None:
        with self._lock:
            if self.cut_after_bytes is None or self.cut_times <= 0:
                return None
            self.cut_times -= 1
            limit = self.cut_after_bytes
            if self.cut_times <= 0:
                self.cut_after_bytes = None
            return limit

    def find_lfs(self, sha256: str) -> HubFile | None:
        for files in self.repos.values():
            for entry in files.values():
                if entry.sha256 == sha256:
                    return entry
        return None


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API_MODEL = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_LFS = re.compile(r"^/lfs/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # silence per-request logging
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            pass  # the client hung up (a cancelled download): nothing to answer

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        hub = self.server.hub
        path = unquote(urlsplit(self.path).path)
        record = RequestRecord(
            self.command,
            path,
            self.headers.get("Range"),
            authorization=self.headers.get("Authorization"),
        )
        try:
            if self.server.is_cdn:
                match = _LFS.match(path)
                entry = hub.find_lfs(match.group("sha")) if match else None
                if entry is None:
                    self._error(404, "EntryNotFound", "no such object", record)
                else:
                    self._send_body(entry, head, record, extra={"ETag": f'"{entry.sha256}"'})
                return
            if match := _RESOLVE.match(path):
                self._resolve(match.group("repo"), match.group("file"), head, record)
            elif match := _API_MODEL.match(path):
                self._model_info(match.group("repo"), "blobs=true" in (self.path or ""), record)
            else:
                self._error(404, None, "not found", record)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            hub.record(record)

    def _gate(self, repo_id: str, record: RequestRecord) -> bool:
        hub = self.server.hub
        if repo_id not in hub.repos:
            self._error(404, "RepoNotFound", "Repository not found", record)
            return False
        token = hub.gated.get(repo_id)
        if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            self._error(401, "GatedRepo", "Access to this model is restricted", record)
            return False
        return True

    def _resolve(self, repo_id: str, filename: str, head: bool, record: RequestRecord) -> None:
        if not self._gate(repo_id, record):
            return
        entry = self.server.hub.repos[repo_id].get(filename)
        if entry is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist", record)
            return
        common = {"X-Repo-Commit": COMMIT}
        if not entry.is_lfs:
            common["ETag"] = f'"{entry.git_blob_id}"'
            self._send_body(entry, head, record, extra=common)
            return
        location = f"{self.server.hub.cdn_url}/lfs/{entry.sha256}"
        record.status = 302
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("ETag", f'"{entry.git_blob_id}"')
        self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
        self.send_header("X-Linked-Size", str(entry.size))
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _model_info(self, repo_id: str, blobs: bool, record: RequestRecord) -> None:
        if not self._gate(repo_id, record):
            return
        siblings = []
        for entry in self.server.hub.repos[repo_id].values():
            sibling: dict[str, object] = {"rfilename": entry.filename}
            if blobs:
                sibling["size"] = entry.size
                sibling["blobId"] = entry.git_blob_id
                if entry.is_lfs:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": 134,
                    }
            siblings.append(sibling)
        owner = repo_id.split("/")[0]
        payload = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": owner,
            "sha": COMMIT,
            "private": False,
            "gated": repo_id in self.server.hub.gated,
            "disabled": False,
            "tags": ["gguf"],
            "siblings": siblings,
        }
        body = json.dumps(payload).encode()
        record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, record: RequestRecord) -> None:
        body = json.dumps({"error": message}).encode()
        record.status = status
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_body(
        self, entry: HubFile, head: bool, record: RequestRecord, extra: dict[str, str]
    ) -> None:
        start, end = 0, entry.size - 1
        status = 200
        wanted = self.headers.get("Range")
        hub = self.server.hub
        asked_from = _RANGE.match(wanted.strip()) if wanted else None
        late = asked_from is not None and int(asked_from.group("start")) >= hub.busy_from
        if late and not head and hub.take_busy():
            self._error(429, None, "slow down", record)
            return
        if hub.ignore_range:
            wanted = None
        if wanted:
            match = _RANGE.match(wanted.strip())
            if match is None or int(match.group("start")) >= entry.size:
                record.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{entry.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match.group("start"))
            if match.group("end"):
                end = min(end, int(match.group("end")))
            status = 206
        length = end - start + 1
        record.status = status
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if head:
            return
        cut = hub.take_cut()
        limit = length if cut is None else max(0, min(length, cut))
        with hub._lock:
            hub.sending += 1
            hub.most_at_once = max(hub.most_at_once, hub.sending)
        try:
            self._send_range(entry, start, length, limit, cut, record)
        finally:
            with hub._lock:
                hub.sending -= 1

    def _send_range(
        self, entry: HubFile, start: int, length: int, limit: int, cut: int | None,
        record: RequestRecord,
    ) -> None:  # fmt: skip
        hub = self.server.hub
        paced = hub.bytes_per_s is not None or hub.stall_after_bytes is not None
        if entry.data is None and not hub.corrupt and cut is None and not paced:
            record.body_bytes = self._sendfile(entry, start, length)
        else:
            self._write_slices(entry, start, limit, hub.corrupt, record)
        if record.body_bytes < length:
            # A dropped connection: the client sees fewer bytes than Content-Length promised.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _sendfile(self, entry: HubFile, start: int, length: int) -> int:
        assert entry.path is not None
        with open(entry.path, "rb") as handle:
            sent: int = self.connection.sendfile(handle, start, length)
            return sent

    def _write_slices(
        self, entry: HubFile, start: int, count: int, corrupt: bool, record: RequestRecord
    ) -> int:
        """Write the body in slices (paced, cut or corrupted); `record` counts what went out,
        also when the client hangs up half way."""
        hub = self.server.hub
        sent = 0
        middle = entry.size // 2
        rate = hub.bytes_per_s
        block = 1 << 20 if rate is None else max(1024, int(rate / 200))
        began = time.monotonic()
        while sent < count:
            if hub.stall_after_bytes is not None and hub.sent_so_far() >= hub.stall_after_bytes:
                while hub.stall_after_bytes is not None:
                    time.sleep(0.05)  # hold the connection open, send nothing
                return sent  # released: that client is gone (killed), drop the connection
            if rate is not None:
                due = began + sent / rate
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
            offset = start + sent
            piece = self._read(entry, offset, min(block, count - sent))
            if corrupt and offset <= middle < offset + len(piece):
                flipped = bytearray(piece)
                flipped[middle - offset] ^= 0xFF
                piece = bytes(flipped)
            self.wfile.write(piece)
            sent += len(piece)
            record.body_bytes = sent
            hub.count_sent(len(piece))
        return sent

    @staticmethod
    def _read(entry: HubFile, offset: int, count: int) -> bytes:
        if entry.data is not None:
            return entry.data[offset : offset + count]
        assert entry.path is not None
        with open(entry.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(count)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, hub: FakeHub, is_cdn: bool, handler: type[BaseHTTPRequestHandler] | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), handler or _Handler)
        self.hub = hub
        self.is_cdn = is_cdn

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


@contextmanager
def running_hub(
    hub: FakeHub | None = None, handler: type[BaseHTTPRequestHandler] | None = None
) -> Iterator[FakeHub]:
    """Start the hub and its CDN on free loopback ports; stop both on exit.

    `handler` swaps the protocol (the fake ModelScope site reuses everything else)."""
    hub = hub or FakeHub()
    servers = [_Server(hub, False, handler), _Server(hub, True, handler)]
    hub.hub_url, hub.cdn_url = servers[0].url, servers[1].url
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield hub
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_blob(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking test content."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])
