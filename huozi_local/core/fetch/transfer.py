"""One file over HTTP into a `.part` file that survives anything, hashed while it is written.

huggingface_hub 2.x downloads into a per-process temporary file and deletes it when the transfer
fails, so a dropped connection or a Ctrl-C 20 GB into a 27 GB file starts again from zero. Model
files are too big for that: this module appends to a `.part` file that is never deleted on
failure, resumes it with a Range request (in the same run after a dropped connection, or in the
next run after a crash), and feeds every byte to sha256 as it is written, so verifying a finished
download costs no second read of the file.

The bytes move through the standard library (urllib, which honours HTTP(S)_PROXY and NO_PROXY)
with 4 MiB `readinto` calls, while sha256 runs in a second thread (hashlib releases the GIL): the
httpx client inside huggingface_hub reads 64 KiB at a time and reached about half of curl's
loopback speed here, the difference being Python overhead per read (benchmarks/bench_download.py).
huggingface_hub still does everything that needs the hub's protocol (listing, HEAD, errors).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huozi_local.core.errors import HuoziError, NotEnoughDisk, connection_failure_reason
from huozi_local.core.progress import ProgressCallback, ThrottledProgress, check_cancel
from huozi_local.core.units import format_bytes

READ_TIMEOUT_S = 60.0
MAX_ATTEMPTS_WITHOUT_PROGRESS = 5
BUFFER_BYTES = 4 << 20
BUFFERS = 4
HASH_BLOCK = 8 << 20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class TransferResult:
    size: int
    sha256: str
    bytes_downloaded: int
    resumed_from: int
    range_requests: int


class TransferMeter:
    """Speed over the last few seconds and time left, for progress messages (CLI and TUI)."""

    def __init__(self, total: int | None, window_s: float = 5.0) -> None:
        self.total = total
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, done: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window_s:
            self._samples.popleft()

    @property
    def bytes_per_s(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    @property
    def eta_s(self) -> float | None:
        speed = self.bytes_per_s
        if not speed or self.total is None or not self._samples:
            return None
        return max(0.0, (self.total - self._samples[-1][1]) / speed)

    def message(self) -> str:
        speed, eta = self.bytes_per_s, self.eta_s
        if speed is None:
            return ""
        text = f"{format_bytes(speed)}/s"
        return f"{text}, {format_duration(eta)} left" if eta is not None else text


def format_duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def hash_existing(
    part: Path, progress: ProgressCallback | None, total: int | None
) -> tuple[Any, int]:
    """sha256 state of bytes already on disk, so a resumed download still verifies in one pass."""
    digest = hashlib.sha256()
    reporter = ThrottledProgress(progress, "download", total)
    with open(part, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            reporter.advance(len(block), "checking what is already downloaded")
    return digest, reporter.done


class _TransientFailure(Exception):
    """A failure worth retrying with a Range request (dropped connection, 5xx, timeout)."""


class HashingSink:
    """Appends to the `.part` file and hashes the same bytes on a second thread.

    Buffers rotate through a small pool: the network thread fills one while the hasher digests
    another, so neither waits for the other and memory stays at BUFFERS x BUFFER_BYTES.
    """

    def __init__(self, part: Path, digest: Any) -> None:
        self._file = open(part, "ab", buffering=0)
        self._digest = digest
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(bytearray(BUFFER_BYTES))
        self._full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self._hasher = threading.Thread(target=self._hash_loop, name="sha256", daemon=True)
        self._hasher.start()

    def _hash_loop(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, n = item
            self._digest.update(memoryview(buffer)[:n])
            self._free.put(buffer)

    def take(self) -> bytearray:
        return self._free.get()

    def commit(self, buffer: bytearray, n: int) -> None:
        view = memoryview(buffer)[:n]
        written = 0
        while written < n:
            written += self._file.write(view[written:]) or 0
        self._full.put((buffer, n))

    def give_back(self, buffer: bytearray) -> None:
        self._free.put(buffer)

    def reset(self) -> None:
        """The server ignored our Range: the body is the whole file, so start both afresh."""
        self.close()
        self._file = open(self._file.name, "wb", buffering=0)
        self._digest = hashlib.sha256()
        self._hasher = threading.Thread(target=self._hash_loop, name="sha256", daemon=True)
        self._hasher.start()

    def close(self) -> Any:
        self._full.put(None)
        self._hasher.join()
        self._file.close()
        return self._digest


def fetch_to_part(
    url: str,
    part: Path,
    *,
    expected_size: int | None,
    headers: dict[str, str],
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    what: str = "download",
) -> TransferResult:
    """Bring `part` up to the whole remote file, resuming whatever is already there.

    Transient failures are retried with a Range request (the attempt counter resets whenever
    bytes arrive); a server that ignores Range restarts the file cleanly. On cancel or a final
    failure the bytes received so far stay in `part` for the next run.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    part.touch()
    if expected_size is not None and part.stat().st_size > expected_size:
        part.write_bytes(b"")  # longer than the file itself: not a prefix of it, start over
    digest, have = hash_existing(part, progress, expected_size)
    state = _Transfer(url, headers, expected_size, have, progress, cancel)
    sink = HashingSink(part, digest)
    try:
        attempts = 0
        while state.total is None or state.have < state.total:
            check_cancel(cancel, what)
            before = state.have
            try:
                if state.fetch_once(sink):
                    break
            except _TransientFailure as exc:
                attempts = 0 if state.have > before else attempts + 1
                if attempts >= MAX_ATTEMPTS_WITHOUT_PROGRESS:
                    raise HuoziError(f"{exc}: run the command again to resume") from exc
                time.sleep(min(4.0, 0.25 * 2 ** max(0, attempts - 1)))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NotEnoughDisk(
                f"the disk filled up while downloading {part.name}; free some space and run "
                "the command again to resume"
            ) from exc
        raise
    finally:
        digest = sink.close()
    check_cancel(cancel, what)
    state.report(force=True)
    if state.total is not None and state.have != state.total:
        raise HuoziError(f"{part.name}: got {state.have} of {state.total} bytes: run it again")
    return TransferResult(
        state.have, digest.hexdigest(), state.have - have, have, state.range_requests
    )


class _Transfer:
    """One download's moving parts: the request loop, progress and the Range bookkeeping."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        total: int | None,
        have: int,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        self.url, self.headers, self.total, self.have = url, headers, total, have
        self.progress, self.cancel = progress, cancel
        self.meter = TransferMeter(total)
        self.range_requests = 0
        self._reporter = ThrottledProgress(progress, "download", total)
        self._opener = urllib.request.build_opener()  # honours HTTP(S)_PROXY / NO_PROXY

    def report(self, force: bool = False) -> None:
        self._reporter.update(self.have, self._speed_and_eta, force=force)

    def _speed_and_eta(self) -> str:
        self.meter.update(self.have, time.monotonic())
        return self.meter.message()

    def fetch_once(self, sink: HashingSink) -> bool:
        """One request; True when the file is complete (or its size was unknown and it ended)."""
        request = urllib.request.Request(self.url, headers={**self.headers})
        request.add_header("Accept-Encoding", "identity")
        if self.have:
            request.add_header("Range", f"bytes={self.have}-")
            self.range_requests += 1
        try:
            response = self._opener.open(request, timeout=READ_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and self.have and self.total is None:
                return True  # we already hold every byte of a file of unknown size
            if exc.code in RETRY_STATUSES:
                raise _TransientFailure(f"the server answered HTTP {exc.code}") from exc
            raise HuoziError(http_error_message(exc.code, self.url)) from exc
        except _TRANSIENT as exc:
            raise _TransientFailure(
                f"connection failed ({connection_failure_reason(exc)})"
            ) from exc
        with response:
            if self.have and response.status == 200:
                sink.reset()  # Range ignored: the body is the whole file
                self.have = 0
            elif self.have:
                check_content_range(response.headers.get("Content-Range"), self.have)
            if self.total is None:
                self.total = _total_size(response.headers, self.have)
                self.meter.total = self.total
            try:
                self._stream(response, sink)
            except _TRANSIENT as exc:
                raise _TransientFailure(
                    f"connection dropped ({connection_failure_reason(exc)})"
                ) from exc
        return self.total is None

    def _stream(self, response: http.client.HTTPResponse, sink: HashingSink) -> None:
        while True:
            if self.cancel is not None and self.cancel.is_set():
                return
            buffer = sink.take()
            n = response.readinto(buffer)
            if not n:
                sink.give_back(buffer)
                if self.total is not None and self.have < self.total:
                    raise http.client.IncompleteRead(b"", self.total - self.have)
                return
            sink.commit(buffer, n)
            self.have += n
            self.report()


def http_error_message(status: int, url: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(url).netloc
    if status in (401, 403):
        return f"{host} refused the download (HTTP {status}): set HF_TOKEN to a token with access"
    if status == 404:
        return f"{host} no longer has the file (HTTP 404): run the command again"
    return f"{host} answered HTTP {status}: try again later"


def check_content_range(header: str | None, have: int) -> None:
    match = _CONTENT_RANGE.match(header or "")
    if match is None or int(match.group(1)) != have:
        raise HuoziError(
            f"the server resumed at the wrong place (Content-Range {header!r}, wanted byte {have})"
        )


def _total_size(headers: Any, have: int) -> int | None:
    match = _CONTENT_RANGE.match(headers.get("Content-Range") or "")
    if match and match.group(3) != "*":
        return int(match.group(3))
    length = headers.get("Content-Length")
    return have + int(length) if length is not None else None
