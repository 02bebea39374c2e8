"""Saved KV states on disk: one file per prompt, written so that a damaged one is only skipped.

A file holds what one prompt left in llama.cpp's KV cache: the tokens, the exact token ids of
the replies among them (text read back does not always tokenize to the ids the model
generated, and a prompt built in a new run must match the saved tokens), then the state
llama.cpp serialised for them. Its header names the key it is valid for (the model file, the
KV settings, the llama.cpp build) and carries a CRC-32 of everything after it, because
llama.cpp itself accepts a state whose numbers were damaged and would answer from garbage.

Files are written to a temporary name, synced and renamed, so a crash never leaves half a file
under a real name; a reader that meets a short, foreign or damaged file says why and the caller
removes it. The least recently used file goes first when the folder is over its cap (a use
touches the file's modification time).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from huozi_local.core import disk

MAGIC = b"HZKV"
VERSION = 2
# magic, version, key digest, tokens, replies bytes (JSON), state bytes, crc32
HEADER = struct.Struct("<4sI32sIIQI")
Replies = list[tuple[str, list[int]]]
SUFFIX = ".kv"
ABOUT = "about.json"  # what a key folder's states were saved for, for `huozi-local cache`


class DamagedEntry(Exception):
    """A file that is not a usable entry (short, foreign, from another version, damaged)."""


@dataclass(frozen=True)
class EntryHeader:
    key: str
    n_tokens: int
    replies_bytes: int
    state_bytes: int
    crc: int

    @property
    def state_offset(self) -> int:
        return HEADER.size + 4 * self.n_tokens + self.replies_bytes

    @property
    def file_bytes(self) -> int:
        return self.state_offset + self.state_bytes


def entry_name(tokens: np.ndarray) -> str:
    """The file name for a token sequence: equal prompts share one file."""
    return hashlib.sha256(tokens.astype("<i4").tobytes()).hexdigest()[:32] + SUFFIX


def _crc(tokens: bytes, replies: bytes, state: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(state, zlib.crc32(replies, zlib.crc32(tokens))) & 0xFFFFFFFF


def _replies_from(raw: bytes, name: str) -> Replies:
    try:
        rows = json.loads(raw.decode("utf-8"))
        return [(str(text), [int(i) for i in ids]) for text, ids in rows]
    except (ValueError, TypeError) as exc:
        raise DamagedEntry(f"{name}: its replies cannot be read") from exc


def read_header(path: Path) -> tuple[EntryHeader, np.ndarray, bytes]:
    """The header, the tokens and the replies (still JSON) of an entry, not its state: cheap
    enough to index every entry when the cache opens."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER.size)
            if len(raw) < HEADER.size:
                raise DamagedEntry(f"{path.name}: shorter than a header")
            magic, version, key, n_tokens, replies_bytes, state_bytes, crc = HEADER.unpack(raw)
            if magic != MAGIC:
                raise DamagedEntry(f"{path.name}: not a saved KV state")
            if version != VERSION:
                raise DamagedEntry(f"{path.name}: written by another version ({version})")
            header = EntryHeader(
                key.decode("ascii", "replace"), n_tokens, replies_bytes, state_bytes, crc
            )
            if os.fstat(handle.fileno()).st_size != header.file_bytes:
                raise DamagedEntry(f"{path.name}: truncated or padded")
            tokens = np.frombuffer(handle.read(4 * n_tokens), dtype="<i4").astype(np.int32)
            replies = handle.read(replies_bytes)
    except OSError as exc:
        raise DamagedEntry(f"{path.name}: {exc.strerror or exc}") from exc
    return header, tokens, replies


def read_replies(path: Path) -> Replies:
    """The exact reply ids an entry carries (checked as JSON; the CRC when it is restored)."""
    _, _, raw = read_header(path)
    return _replies_from(raw, path.name)


@contextmanager
def open_state(path: Path, key: str) -> Iterator[tuple[np.ndarray, memoryview]]:
    """The tokens and the state of an entry, checked against `key` and its CRC.

    The state is a copy-on-write mapping of the file: llama.cpp reads it straight from the page
    cache, with no buffer to allocate, zero and copy into first (for huozi3's 470 MB states
    those cost more than the read). Valid inside the `with` only.
    """
    header, tokens, replies = read_header(path)
    if header.key != key:
        raise DamagedEntry(f"{path.name}: saved for another model or KV setting")
    try:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise DamagedEntry(f"{path.name}: {exc}") from exc
    state = memoryview(mapped)[header.state_offset :]
    try:
        if _crc(tokens.astype("<i4").tobytes(), replies, state) != header.crc:
            raise DamagedEntry(f"{path.name}: its bytes do not match its checksum")
        yield tokens, state
    finally:
        state.release()
        mapped.close()


def write_entry(
    folder: Path,
    key: str,
    tokens: np.ndarray,
    state: bytearray,
    replies: Sequence[tuple[str, list[int]]] = (),
) -> Path:
    """Write an entry durably (temporary name, fsync, rename, fsync the folder); OSError as
    the disk raised it (ENOSPC on a full disk), nothing left behind under the real name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / entry_name(tokens)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    token_bytes = tokens.astype("<i4").tobytes()
    reply_bytes = json.dumps([[t, ids] for t, ids in replies], ensure_ascii=False).encode()
    crc = _crc(token_bytes, reply_bytes, state)
    header = HEADER.pack(
        MAGIC, VERSION, key.encode("ascii"), len(tokens), len(reply_bytes), len(state), crc
    )
    try:
        with open(partial, "wb") as handle:
            handle.write(header)
            handle.write(token_bytes)
            handle.write(reply_bytes)
            handle.write(state)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    disk.sync_to_disk(folder)
    return target


def entry_files(root: Path) -> Iterator[Path]:
    """Every entry under `root` (one folder per key)."""
    if root.is_dir():
        yield from root.glob(f"*/*{SUFFIX}")


def leftovers(root: Path) -> Iterator[Path]:
    """Temporary files a crash left behind (never under an entry's real name)."""
    if root.is_dir():
        yield from root.glob(f"*/*{SUFFIX}.*.tmp")


def trim_to(root: Path, cap_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used entries until those under `root` fit `cap_bytes`;
    `keep` (the entry just written) goes last. Returns what was removed."""
    files = []
    for path in entry_files(root):
        try:
            stat = path.stat()
        except OSError:
            continue
        files.append((path == keep, stat.st_mtime, stat.st_size, path))
    files.sort()
    total = sum(size for _, _, size, _ in files)
    removed = []
    for _, _, size, path in files:
        if total <= cap_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


def describe_folder(folder: Path, about: Mapping[str, object]) -> None:
    """Say once, beside a key's entries, which model and settings they belong to."""
    target = folder / ABOUT
    if target.exists():
        return
    partial = folder / f"{ABOUT}.{os.getpid()}.tmp"
    try:
        partial.write_text(json.dumps(dict(about), ensure_ascii=False), encoding="utf-8")
        os.replace(partial, target)
    except OSError:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredKey:
    """One key's saved states, as `huozi-local cache` lists them."""

    folder: Path
    about: dict[str, object]
    entries: int
    tokens: int
    bytes: int
    last_used: float

    def to_json(self) -> dict[str, object]:
        return {
            "folder": str(self.folder),
            **self.about,
            "entries": self.entries,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.last_used)),
        }


def stored_keys(root: Path) -> list[StoredKey]:
    """What is saved under `root`, one row per key, most recently used first; entries that
    cannot be read are counted by size only."""
    rows = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        try:
            about = json.loads((folder / ABOUT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            about = {}
        entries = tokens = size = 0
        last = 0.0
        for path in folder.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
                header, _, _ = read_header(path)
            except (OSError, DamagedEntry):
                continue
            entries += 1
            tokens += header.n_tokens
            size += stat.st_size
            last = max(last, stat.st_mtime)
        if entries:
            rows.append(StoredKey(folder, about if isinstance(about, dict) else {}, entries,
                                  tokens, size, last))  # fmt: skip
    return sorted(rows, key=lambda r: r.last_used, reverse=True)


def clear(root: Path) -> tuple[int, int]:
    """Remove every saved state under `root`: (files, bytes) removed."""
    removed = freed = 0
    if not root.is_dir():
        return 0, 0
    for path in [*entry_files(root), *leftovers(root)]:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        removed += 1
        freed += size
    for folder in root.glob("*"):
        (folder / ABOUT).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass
    return removed, freed
