"""Download a model file straight into its final form: several connections, repaired in the stream.

The first megabytes arrive first (the `.head` file): they hold the GGUF header, and with it the
layout of the file to write. A file that loads as it is keeps its layout; an official legacy
huozi3 file is repaired as it arrives, every range written to its place in the merged file, so
there is no second pass over 27 GB and no second copy on the disk: the peak is the final file,
its head and a side file of a few MB (`stream_layout`). Everything lives under the final name
plus `.partial*`; only a file whose sha256 over the original byte order matched the hub's, and
(when repaired) whose header reads back as planned, is handed to the caller to be renamed.

`<final>.partial.json` records which source ranges are on the disk, written only after they
were synced (`parallel.ParallelFetch`), so a rerun after a crash or `kill -9` fetches only what
is missing. A record for another version of the remote file (another sha256 or size) starts the
download over, and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from huozi_local.core import disk
from huozi_local.core.errors import GGUFError, HuoziError
from huozi_local.core.fetch.byte_ranges import Ranges
from huozi_local.core.fetch.parallel import ParallelFetch
from huozi_local.core.fetch.stream_layout import MAIN, SIDE, StreamLayout
from huozi_local.core.gguf.header import GGUFFile, read_gguf
from huozi_local.core.gguf.repair import needs_repair, repair_plan
from huozi_local.core.gguf.repair_layout import SOURCE_SHA256_KEY, verify_repaired
from huozi_local.core.gguf.rewrite import pwrite_all
from huozi_local.core.progress import Progress, ProgressCallback, check_cancel

HEAD_FIRST = 4 << 20
"""The first bytes fetched, before the layout is known: enough for huozi3's header (~2 MB)."""
HEAD_MAX = 256 << 20
HASH_BLOCK = 8 << 20
RECORD_VERSION = 1


@dataclass(frozen=True)
class InPlaceResult:
    partial: Path
    """The finished, verified file under its `.partial` name (the caller renames it)."""
    sha256: str
    bytes_downloaded: int
    resumed_from: int
    connections: int
    seconds: float
    repaired: bool
    changes: list[str] = field(default_factory=list)
    size: int = 0


class InPlaceFiles:
    """The files of one download in progress, beside the final name."""

    def __init__(self, final: Path) -> None:
        self.main = final.with_name(final.name + ".partial")
        self.side = final.with_name(final.name + ".partial.side")
        self.head = final.with_name(final.name + ".partial.head")
        self.record = final.with_name(final.name + ".partial.json")

    def all(self) -> list[Path]:
        return [self.main, self.side, self.head, self.record]

    def exists(self) -> bool:
        return self.record.exists() or self.main.exists()

    def discard(self, keep_main: bool = False) -> None:
        for path in self.all():
            if not (keep_main and path == self.main):
                path.unlink(missing_ok=True)

    def held_bytes(self) -> int:
        """Bytes the files take on the disk (sparse: only what was written)."""
        return sum(p.stat().st_blocks * 512 for p in self.all() if p.exists())

    def bytes_recorded(self) -> int:
        """How many bytes of the file the resume record says are here (0 when unreadable)."""
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
            return Ranges.from_json(record["done"], int(record["size"])).total()
        except (OSError, ValueError, KeyError, TypeError):
            return 0


class _Sink:
    """Writes source bytes where the layout puts them; reads them back in source order."""

    def __init__(self, files: InPlaceFiles, layout: StreamLayout) -> None:
        self.layout = layout
        self.fds = {MAIN: _open_sized(files.main, layout.main_size)}
        if layout.side_size:
            self.fds[SIDE] = _open_sized(files.side, layout.side_size)
        if layout.prelude:
            pwrite_all(self.fds[MAIN], layout.prelude, 0)

    def write(self, src: int, data: memoryview) -> None:
        for dest, at, offset, length in self.layout.pieces(src, len(data)):
            pwrite_all(self.fds[dest], data[offset : offset + length], at)

    def read(self, src: int, n: int) -> bytearray:
        out = bytearray(n)
        view = memoryview(out)
        for dest, at, offset, length in self.layout.pieces(src, n):
            got = os.preadv(self.fds[dest], [view[offset : offset + length]], at)
            if got != length:
                raise GGUFError("a downloaded file shrank while it was being checked")
        return out

    def sync(self) -> None:
        for fd in self.fds.values():
            os.fsync(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


class _HeadSink:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def write(self, src: int, data: memoryview) -> None:
        pwrite_all(self.fd, data, src)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _open_sized(path: Path, size: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    return fd


class _PrefixHasher(threading.Thread):
    """sha256 of the source in its own byte order, as far as it has arrived without a gap.

    Downloads run roughly in order, so the bytes are hashed soon after they were written, read
    back while the page cache still holds them: verifying costs no second read from the disk.
    """

    def __init__(self, fetch: ParallelFetch, sink: _Sink, size: int) -> None:
        super().__init__(name="sha256-in-order", daemon=True)
        self.fetch, self.sink, self.size = fetch, sink, size
        self.digest = hashlib.sha256()
        self.hashed = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.hashed < self.size and not self.stop.is_set():
                with self.fetch.lock:
                    ready = self.fetch.done.prefix_end()
                    if ready <= self.hashed:
                        self.fetch.lock.wait(0.2)
                        continue
                upto = min(ready, self.hashed + HASH_BLOCK)
                self.digest.update(self.sink.read(self.hashed, upto - self.hashed))
                self.hashed = upto
        except BaseException as exc:
            self.error = exc

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        if self.hashed != self.size:
            raise HuoziError("internal error: the download was not hashed to its end")
        return self.digest.hexdigest()


def download_in_place(
    final: Path,
    url: str,
    headers: dict[str, str],
    *,
    size: int,
    sha256: str,
    identity: dict[str, object],
    repair: bool,
    connections: int,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    check_room: Callable[[int], None] | None = None,
) -> InPlaceResult:
    """Fetch the file at `url` (`size` bytes, `sha256`) into `final`'s `.partial`, repaired in
    the stream when `repair` and it needs it. RangesIgnored when the server does not serve
    ranges (the caller falls back to one stream); the resume record keeps `identity` (which
    remote file) so that another version of it starts over. `check_room(bytes)` refuses early
    when the disk cannot hold what is still to be written."""
    files = InPlaceFiles(final)
    wanted = {"version": RECORD_VERSION, "sha256": sha256, "size": size, **identity}
    record = _read_record(files, wanted, progress)
    started = time.monotonic()
    head = _Head(files, url, headers, size, wanted, cancel, connections)
    head_size = head.ensure(record)
    gguf = head.header(head_size)
    url = head.url
    if gguf is not None and gguf.file_size != size:
        gguf = None
    layout = (
        StreamLayout.repaired(gguf, sha256)
        if repair and gguf is not None and needs_repair(gguf)
        else StreamLayout.identity(size)
    )
    head_size = files.head.stat().st_size
    if record is not None and record.get("layout") != layout.kind:
        record = None  # written by another layout: its bytes are not where these go
    done = Ranges.from_json(record["done"], size) if record is not None else Ranges()
    resumed_from = done.total()
    if check_room is not None:
        check_room(layout.main_size + layout.side_size + head_size - files.held_bytes())
    sink = _Sink(files, layout)
    try:
        if done.prefix_end() < head_size:  # the head's bytes, to where the layout puts them
            _place_head(files, sink, head_size)
            done.add(0, head_size)

        def durable(ranges: Ranges) -> None:
            _write_record(files, {**wanted, "layout": layout.kind, "head": head_size,
                                  "done": ranges.to_json()})  # fmt: skip

        fetch = ParallelFetch(
            url, headers, size, sink, done, connections=connections, progress=progress,
            cancel=cancel, on_durable=durable,
        )  # fmt: skip
        hasher = _PrefixHasher(fetch, sink, size)
        hasher.start()
        try:
            stats = fetch.run()
        finally:
            if fetch.done.total() < size:
                hasher.stop.set()
        check_cancel(cancel, "download")
        if progress is not None:
            progress(Progress("verify", 0, size, "checking sha256 in the original byte order"))
        digest = hasher.result()
        sink.sync()
    finally:
        sink.close()
    if digest != sha256:
        files.discard()
        raise HuoziError(
            f"{final.name}: the download is corrupt (sha256 {digest[:12]}…, expected "
            f"{sha256[:12]}…); the bad download was deleted: run the command again, and if it "
            "fails twice try another mirror (HF_ENDPOINT) or --source"
        )
    changes: list[str] = []
    if layout.repair is not None and gguf is not None:
        try:
            verify_repaired(gguf, files.main, layout.repair, sha256)
        except GGUFError as exc:
            files.discard()  # a rerun would only find the same bytes and fail the same way
            raise GGUFError(
                f"{final.name}: {exc}; the download was deleted: run the command again, and if "
                "it fails twice use --keep-original (download as published, repair afterwards)"
            ) from exc
        changes = [
            *repair_plan(gguf),
            "repaired while downloading: each range written to its place in the merged file",
            f"recorded the source sha256 {sha256} as {SOURCE_SHA256_KEY}",
        ]
    if progress is not None:
        progress(Progress("verify", size, size, "sha256 matches"))
    return InPlaceResult(
        files.main, digest, size - resumed_from, resumed_from, stats.connections,
        time.monotonic() - started, layout.repair is not None, changes, layout.main_size,
    )  # fmt: skip


# -- the head --------------------------------------------------------------------------------------
class _Head:
    """The file's first bytes in `.head`, fetched until they hold the GGUF header; recorded as
    they arrive, so that a run that stops even here does not fetch them again."""

    def __init__(
        self,
        files: InPlaceFiles,
        url: str,
        headers: dict[str, str],
        size: int,
        wanted: dict[str, object],
        cancel: threading.Event | None,
        connections: int,
    ) -> None:
        self.files, self.url, self.headers, self.size = files, url, headers, size
        self.wanted, self.cancel, self.connections = wanted, cancel, connections

    def ensure(self, record: dict[str, object] | None) -> int:
        """How many first bytes are here: those a record kept, or the first megabyte now."""
        kept = record.get("head") if record is not None else None
        here = self.files.head.stat().st_size if self.files.head.exists() else -1
        if isinstance(kept, int) and here >= kept:
            return kept
        self.files.discard()
        return self.fetch(0, min(self.size, HEAD_FIRST))

    def fetch(self, have: int, upto: int) -> int:
        def durable(ranges: Ranges) -> None:
            _write_record(self.files, {**self.wanted, "layout": None,
                                       "head": ranges.prefix_end(), "done": []})  # fmt: skip

        sink = _HeadSink(self.files.head)
        try:
            fetch = ParallelFetch(
                self.url, self.headers, upto, sink, Ranges([(0, have)]),
                connections=self.connections, cancel=self.cancel, on_durable=durable,
            )  # fmt: skip
            fetch.run()
        finally:
            sink.close()
        self.url = fetch.final_url  # the rest goes straight to where it was redirected
        check_cancel(self.cancel, "download")
        return upto

    def header(self, head_size: int) -> GGUFFile | None:
        """The GGUF header, the head growing until it holds it; None: not a GGUF file."""
        while True:
            try:
                return read_gguf(self.files.head, declared_size=self.size)
            except GGUFError as exc:
                if "truncated" not in str(exc) or head_size >= min(self.size, HEAD_MAX):
                    return None
            bigger = min(self.size, HEAD_MAX, max(HEAD_FIRST, head_size * 4))
            head_size = self.fetch(head_size, bigger)


def _place_head(files: InPlaceFiles, sink: _Sink, head_size: int) -> None:
    with open(files.head, "rb") as handle:
        data = handle.read(head_size)
    sink.write(0, memoryview(data))


# -- the resume record -----------------------------------------------------------------------------
def _read_record(
    files: InPlaceFiles, wanted: dict[str, object], progress: ProgressCallback | None
) -> dict[str, object] | None:
    """The record of an earlier attempt at this very file; another version's is discarded."""
    if not files.exists():
        return None
    try:
        record = json.loads(files.record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    same = isinstance(record, dict) and all(record.get(k) == v for k, v in wanted.items())
    if not same:
        if isinstance(record, dict) and progress is not None:
            progress(Progress("download", 0, None, "the file changed on the server: starting over"))
        files.discard()
        return None
    assert isinstance(record, dict)
    return record


def _write_record(files: InPlaceFiles, record: dict[str, object]) -> None:
    partial = files.record.with_name(files.record.name + ".tmp")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, files.record)
    with contextlib.suppress(OSError):
        disk.sync_to_disk(files.record.parent)
