"""Write a new GGUF header around an existing file's bytes, and stream tensor data into it.

The repair rewrites only what it must: metadata entries it does not change are copied verbatim
from the source header (so nothing it does not understand can be mangled), and tensor data moves
as raw bytes from source offsets to destination offsets. Keeping this byte plumbing apart from
the repair's decisions lets each be read (and tested) on its own.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from huozi_local.core.errors import GGUFError, NotEnoughDisk
from huozi_local.core.gguf.byte_format import GGUF_MAGIC, SCALAR_FORMATS, ValueType, align
from huozi_local.core.units import format_bytes

# Big enough that syscalls cost nothing next to the copying, small enough to keep RSS low and
# to check the cancel event several times a second even on a slow disk.
CHUNK_BYTES = 8 << 20

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})

# Windows opens fds in text mode unless told otherwise.
O_BINARY: int = getattr(os, "O_BINARY", 0)


def open_source(path: object) -> int:
    return os.open(str(path), os.O_RDONLY | O_BINARY)


def open_partial(path: object) -> int:
    """Create a new file, never open an existing one: O_TRUNC on whatever lay under the name
    (a symlink or hard link to the source) emptied the file it led to."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY | getattr(os, "O_NOFOLLOW", 0)
    return os.open(str(path), flags, 0o644)


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Positional read into `view`; a seek-and-read fallback where preadv is missing (Windows)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)
    data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def encode_value(value_type: ValueType, value: Any, array_type: ValueType | None = None) -> bytes:
    if value_type == ValueType.STRING:
        return encode_string(str(value))
    if value_type == ValueType.ARRAY:
        if array_type is None:
            raise GGUFError("an array metadata value needs an element type")
        items = list(value)
        head = struct.pack("<IQ", int(array_type), len(items))
        if array_type == ValueType.STRING:
            return head + b"".join(encode_string(str(v)) for v in items)
        if array_type == ValueType.ARRAY:
            raise GGUFError("nested metadata arrays are not re-encoded")
        fmt = SCALAR_FORMATS[array_type]
        return head + struct.pack(f"<{len(items)}{fmt[1:]}", *items)
    return struct.pack(SCALAR_FORMATS[value_type], value)


def encode_kv(
    key: str, value_type: ValueType, value: Any, array_type: ValueType | None = None
) -> bytes:
    return (
        encode_string(key)
        + struct.pack("<I", int(value_type))
        + encode_value(value_type, value, array_type)
    )


@dataclass(frozen=True)
class Piece:
    """`n_bytes` of source tensor data starting at `src_offset` (absolute file offsets)."""

    src_offset: int
    n_bytes: int


@dataclass(frozen=True)
class OutTensor:
    """A tensor of the new file: its header fields and the source bytes it is made of, in order."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    pieces: tuple[Piece, ...]

    @property
    def n_bytes(self) -> int:
        return sum(p.n_bytes for p in self.pieces)


@dataclass(frozen=True)
class Header:
    """The new file's header bytes and where each tensor's data lands (absolute offsets)."""

    data: bytes
    tensor_starts: tuple[int, ...]
    total_size: int
    marker_positions: dict[str, int]


def build_header(
    *,
    version: int,
    kv_blobs: Sequence[bytes],
    tensors: Sequence[OutTensor],
    alignment: int,
    markers: dict[str, bytes] | None = None,
) -> Header:
    """Assemble magic, counts, metadata and tensor infos; lay the data out at `alignment`.

    `markers` maps a name to the prefix of one metadata blob (its encoded key and type); the
    absolute position of the value after it is returned, so a fixed-length placeholder can be
    patched after the data is written.
    """
    parts = [GGUF_MAGIC, struct.pack("<IQQ", version, len(tensors), len(kv_blobs))]
    position = sum(len(p) for p in parts)
    marker_positions: dict[str, int] = {}
    for blob in kv_blobs:
        for name, marker in (markers or {}).items():
            if blob.startswith(marker):
                marker_positions[name] = position + len(marker)
        parts.append(blob)
        position += len(blob)
    relative_offsets: list[int] = []
    cursor = 0
    for tensor in tensors:
        cursor = align(cursor, alignment)
        relative_offsets.append(cursor)
        cursor += tensor.n_bytes
    for tensor, offset in zip(tensors, relative_offsets, strict=True):
        info = encode_string(tensor.name) + struct.pack("<I", len(tensor.shape))
        info += struct.pack(f"<{len(tensor.shape)}Q", *tensor.shape)
        info += struct.pack("<IQ", tensor.ggml_type, offset)
        parts.append(info)
        position += len(info)
    data_offset = align(position, alignment)
    parts.append(b"\0" * (data_offset - position))
    missing = set(markers or {}) - set(marker_positions)
    if missing:
        raise GGUFError(f"internal error: header markers not found: {sorted(missing)}")
    return Header(
        data=b"".join(parts),
        tensor_starts=tuple(data_offset + o for o in relative_offsets),
        total_size=data_offset + cursor,
        marker_positions=marker_positions,
    )


@dataclass(frozen=True)
class Segment:
    """Copy `n_bytes` from `src_offset` in the source to `dst_offset` in the destination."""

    src_offset: int
    dst_offset: int
    n_bytes: int


def plan_segments(header: Header, tensors: Sequence[OutTensor]) -> list[Segment]:
    """Every byte range to move, in source order, adjacent ranges fused into one."""
    segments: list[Segment] = []
    for tensor, start in zip(tensors, header.tensor_starts, strict=True):
        dst = start
        for piece in tensor.pieces:
            segments.append(Segment(piece.src_offset, dst, piece.n_bytes))
            dst += piece.n_bytes
    segments.sort(key=lambda s: s.src_offset)
    fused: list[Segment] = []
    for seg in segments:
        last = fused[-1] if fused else None
        if (
            last is not None
            and last.src_offset + last.n_bytes == seg.src_offset
            and last.dst_offset + last.n_bytes == seg.dst_offset
        ):
            fused[-1] = Segment(last.src_offset, last.dst_offset, last.n_bytes + seg.n_bytes)
        else:
            fused.append(seg)
    return fused


Tick = Callable[[int], None]  # called with the bytes just moved; raises to stop


def copy_segments(src_fd: int, dst_fd: int, segments: Sequence[Segment], tick: Tick) -> None:
    """Move the ranges inside the kernel (copy_file_range) when it can, else read and write."""
    use_kernel = hasattr(os, "copy_file_range")
    buffer: bytearray | None = None
    for seg in segments:
        done = 0
        while done < seg.n_bytes:
            count = min(CHUNK_BYTES, seg.n_bytes - done)
            src_at, dst_at = seg.src_offset + done, seg.dst_offset + done
            moved = 0
            if use_kernel:
                try:
                    moved = os.copy_file_range(src_fd, dst_fd, count, src_at, dst_at)
                except OSError as exc:
                    if exc.errno in DISK_FULL_ERRNOS:
                        raise
                    use_kernel = False  # e.g. EXDEV on old kernels, or an unsupported fs
            if not moved:
                if buffer is None:
                    buffer = bytearray(CHUNK_BYTES)
                view = memoryview(buffer)[:count]
                moved = pread_into(src_fd, view, src_at)
                if moved <= 0:
                    raise GGUFError("the source file shrank while it was being repaired")
                pwrite_all(dst_fd, view[:moved], dst_at)
            done += moved
            tick(moved)


class SourceHasher(threading.Thread):
    """Hashes the whole source, in order, beside the copy.

    The copy stays inside the kernel (copy_file_range) while this thread reads the same pages,
    which the copy has just brought into the page cache, and hashes them; hashlib and the reads
    release the GIL, so on two cores the repair takes about as long as the slower of the two
    rather than their sum.
    """

    def __init__(self, src_path: object, file_size: int) -> None:
        super().__init__(name="repair-sha256", daemon=True)
        self.src_path = src_path
        self.file_size = file_size
        self.hashed = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._digest = hashlib.sha256()

    def run(self) -> None:
        try:
            fd = open_source(self.src_path)  # its own fd: no file position shared with the copy
            try:
                buffer = bytearray(CHUNK_BYTES)
                while self.hashed < self.file_size and not self.stop.is_set():
                    view = memoryview(buffer)[: min(CHUNK_BYTES, self.file_size - self.hashed)]
                    got = pread_into(fd, view, self.hashed)
                    if got <= 0:
                        raise GGUFError("the source file shrank while it was being repaired")
                    self._digest.update(view[:got])
                    self.hashed += got
            finally:
                os.close(fd)
        except BaseException as exc:  # handed to the caller's thread by `result`
            self.error = exc

    def result(self) -> str:
        if self.error is not None:
            raise self.error
        if self.hashed != self.file_size:
            raise GGUFError("internal error: the source was not hashed completely")
        return self._digest.hexdigest()


def pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, view, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            n = os.write(fd, view)
        view = view[n:]
        offset += n


def disk_full_error(folder: object, needed: int) -> NotEnoughDisk:
    return NotEnoughDisk(
        f"the disk filled up while writing into {folder} (the repaired file needs "
        f"{format_bytes(needed)}); nothing was left behind: free some space and run it again"
    )
