"""The prompt cache: KV states of earlier prompts, restored instead of evaluated again.

Evaluating a long conversation costs huozi3 minutes on a laptop CPU; reading its KV state back
(128 KiB a token for the full model) costs well under a second. So the engine keeps the states
of the conversations it has left: the last few in RAM (switching between conversations in one
process), the rest on disk (reopening one after a restart), least recently used out first, each
tier within a cap. A new prompt restores the entry that shares the longest prefix with it and
evaluates only the rest, as llama-server does with `--cache-ram` and `--slot-save-path`.

An entry is saved when the engine's sequence is about to be replaced by another conversation
(not after every reply: while a conversation goes on, the live KV cache is the cache), and
everything still in RAM goes to disk when the engine closes. Entries are valid for one
`CacheKey`: the model file, the KV cache type, flash attention (which changes the V layout) and
the llama.cpp build. The context size is not in the key: a state restores into any context that
holds its tokens, which is how the context grows (see `kv_session`).

Never wrong, never fatal: a restored state gives exactly the logits evaluating gives (tests
compare them bit for bit); a damaged, short or foreign file is removed with one log line and the
prompt is evaluated as usual; a disk that is full or read-only turns the disk tier off for the
session with one notice.

Not thread-safe: the engine's lock serializes every call.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from huozi_local.core.chat import kv_files
from huozi_local.core.chat.kv_session import KvSession
from huozi_local.core.gguf.header import GGUFFile
from huozi_local.core.units import format_bytes

log = logging.getLogger(__name__)

MIN_ENTRY_TOKENS = 64
"""Shorter prompts are evaluated faster than a state is found and read back."""
LEAVING_SHARE = 0.5
"""A prompt that keeps less than this share of the live sequence starts another conversation:
the live one is saved before it is cut (a regenerate or an edit keeps most of it, and is not)."""

NoticeSink = Callable[[str], None]


@dataclass(frozen=True)
class CacheKey:
    """What a saved state is valid for."""

    model: str
    """The model file's identity (`model_identity`)."""
    kv_cache_type: str
    flash_attn: bool
    llama_cpp: str
    label: str = ""
    """The model file's path, for `huozi-local cache` (not part of what makes a state valid)."""

    @property
    def digest(self) -> str:
        text = f"{self.model}|{self.kv_cache_type}|{int(self.flash_attn)}|{self.llama_cpp}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def model_identity(gguf: GGUFFile) -> str:
    """The file's identity from what the header already says and a stat: its size, when it
    was last written and its tensor layout (no second read of a file of tens of GB)."""
    stat = gguf.path.stat()
    layout = [(t.name, t.ggml_type, tuple(t.shape), t.offset) for t in gguf.tensors]
    text = repr((stat.st_size, stat.st_mtime_ns, gguf.data_offset, layout))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(gguf: GGUFFile, *, kv_cache_type: str, flash_attn: bool) -> CacheKey:
    import llama_cpp

    return CacheKey(
        model_identity(gguf), kv_cache_type, flash_attn, llama_cpp.__version__, str(gguf.path)
    )


@dataclass(frozen=True)
class CacheLimits:
    """How much the cache may keep: bytes of states in RAM, and on disk under `folder`
    (None: no disk tier)."""

    ram_bytes: int
    disk_bytes: int
    folder: Path | None


@dataclass
class _Entry:
    tokens: np.ndarray
    state: bytearray | None  # None: on disk only
    path: Path | None  # its file, once written
    size: int
    last_used: float
    replies: list[tuple[str, list[int]]]  # the exact ids of the replies among the tokens


@dataclass(frozen=True)
class CacheStats:
    """What the cache did for the last prompt (for `ask --json` and the tests)."""

    restored_tokens: int = 0
    source: str = ""  # "ram", "disk" or ""
    seconds: float = 0.0  # reading (from disk) and restoring the state
    state_bytes: int = 0


class PromptCache:
    def __init__(
        self, key: CacheKey, limits: CacheLimits, notice: NoticeSink | None = None
    ) -> None:
        """`notice` hears what the user should be told (a full disk); without one, it waits in
        `take_notices` for the engine to pass on with the next reply."""
        self.key = key
        self.limits = limits
        self._pending: list[str] = []
        self._notice = notice or self._queue_notice
        self._entries: dict[str, _Entry] = {}
        self._disk_on = limits.folder is not None and limits.disk_bytes > 0
        self.last = CacheStats()
        self.replies: dict[str, list[int]] = {}
        """The exact ids of replies saved in earlier runs, by their text: a prompt built from a
        stored conversation uses them, so it matches the saved tokens to the end."""
        if self._disk_on:
            self._scan()

    # -- what the engine calls, under its lock ---------------------------------------------------
    def prepare(
        self,
        session: KvSession,
        prompt: Sequence[int],
        replies: Mapping[str, list[int]] | None = None,
    ) -> int:
        """Before `prompt` is evaluated: restore the saved state that shares the most of it with
        it when that beats what the live cache keeps; save the live sequence first when it is
        about to be replaced by another conversation. Returns the tokens restored."""
        self.last = CacheStats()
        wanted = np.asarray(prompt, dtype=np.int32)
        live = session.reusable_prefix(prompt)
        name, common = self._best(wanted, session.capacity)
        if name is None or common <= live:
            if session.n_cached >= MIN_ENTRY_TOKENS and live < LEAVING_SHARE * session.n_cached:
                self.keep(session, replies)
            return 0
        entry = self._entries[name]
        held = np.asarray(session.cached_tokens(), dtype=np.int32)
        if len(held) >= MIN_ENTRY_TOKENS and not _starts(entry.tokens, held):
            self.keep(session, replies)
        if name not in self._entries:  # keeping the live sequence evicted it
            return 0
        restored = self._restore(session, name)
        return min(common, restored)

    def keep(self, session: KvSession, replies: Mapping[str, list[int]] | None = None) -> None:
        """Save what the live sequence holds (in RAM; on disk when RAM is full), with the
        exact ids of those `replies` (text -> ids the model generated) that it contains."""
        tokens = np.asarray(session.cached_tokens(), dtype=np.int32)
        if len(tokens) < MIN_ENTRY_TOKENS:
            return
        name = kv_files.entry_name(tokens)
        if name in self._entries:
            self._entries[name].last_used = time.time()
            return
        state = session.save_state()
        if len(state) > self.limits.ram_bytes and not self._disk_on:
            return
        self._drop_prefixes_of(tokens)
        inside = _replies_in(tokens, replies or {})
        self._entries[name] = _Entry(tokens, state, None, len(state), time.time(), inside)
        self._fit_ram()

    def persist(self, session: KvSession, replies: Mapping[str, list[int]] | None = None) -> None:
        """When the engine closes: the live sequence and every state still in RAM to disk."""
        self.keep(session, replies)
        if not self._disk_on:
            return
        for name in sorted(self._entries, key=lambda n: self._entries[n].last_used):
            entry = self._entries.get(name)
            if entry is not None and entry.path is None and entry.state is not None:
                self._write(name, entry)

    def _queue_notice(self, text: str) -> None:
        self._pending.append(text)
        log.warning("%s", text)

    def take_notices(self) -> list[str]:
        """What the user has not been told yet (each notice once)."""
        pending, self._pending[:] = list(self._pending), []
        return pending

    @property
    def ram_bytes(self) -> int:
        return sum(e.size for e in self._entries.values() if e.state is not None)

    def entries(self) -> list[tuple[int, str]]:
        """(tokens, "ram" | "disk") of every entry (tests and diagnostics)."""
        return [
            (len(e.tokens), "ram" if e.state is not None else "disk")
            for e in self._entries.values()
        ]

    # -- finding and restoring -------------------------------------------------------------------
    def _best(self, prompt: np.ndarray, capacity: int) -> tuple[str | None, int]:
        best: str | None = None
        best_common = 0
        for name, entry in self._entries.items():
            if len(entry.tokens) > capacity:
                continue
            common = _common(entry.tokens, prompt)
            if common > best_common:
                best, best_common = name, common
        return (best, best_common) if best_common >= MIN_ENTRY_TOKENS else (None, 0)

    def _restore(self, session: KvSession, name: str) -> int:
        started = time.perf_counter()
        entry = self._entries[name]
        tokens = entry.tokens.tolist()
        if entry.state is not None:
            source, size, ok = "ram", len(entry.state), session.load_state(entry.state, tokens)
        else:
            assert entry.path is not None
            source = "disk"
            try:
                with kv_files.open_state(entry.path, self.key.digest) as (saved, state):
                    if not np.array_equal(saved, entry.tokens):
                        raise kv_files.DamagedEntry(f"{entry.path.name}: it changed")
                    size, ok = len(state), session.load_state(state, tokens)
            except kv_files.DamagedEntry as exc:
                self._forget(name, f"prompt cache: ignored {exc}")
                return 0
        if not ok:
            self._forget(name, "prompt cache: llama.cpp refused a saved state; evaluating")
            return 0
        entry.last_used = time.time()
        if entry.path is not None:
            _touch(entry.path)
        self.last = CacheStats(len(tokens), source, time.perf_counter() - started, size)
        return len(tokens)

    def _forget(self, name: str, why: str) -> None:
        entry = self._entries.pop(name)
        if entry.path is not None:
            entry.path.unlink(missing_ok=True)
        log.warning("%s", why)

    def _drop_prefixes_of(self, tokens: np.ndarray) -> None:
        """An entry whose tokens the new one starts with is never the better choice again."""
        for name in [n for n, e in self._entries.items() if _starts(tokens, e.tokens)]:
            entry = self._entries.pop(name)
            if entry.path is not None:
                entry.path.unlink(missing_ok=True)

    # -- the two tiers ---------------------------------------------------------------------------
    def _fit_ram(self) -> None:
        """Least recently used states leave RAM first: to disk, or gone without a disk tier."""
        in_ram = sorted(
            (n for n, e in self._entries.items() if e.state is not None),
            key=lambda n: self._entries[n].last_used,
        )
        for name in in_ram:
            if self.ram_bytes <= self.limits.ram_bytes:
                return
            entry = self._entries[name]
            if self._disk_on and entry.path is None:
                self._write(name, entry)
            if entry.path is not None:
                entry.state = None
            else:
                del self._entries[name]

    def _write(self, name: str, entry: _Entry) -> None:
        assert self.limits.folder is not None and entry.state is not None
        folder = self.limits.folder / self.key.digest
        try:
            if entry.size > self.limits.disk_bytes:
                return
            kv_files.trim_to(self.limits.folder, self.limits.disk_bytes - entry.size)
            entry.path = kv_files.write_entry(
                folder, self.key.digest, entry.tokens, entry.state, entry.replies
            )
            kv_files.describe_folder(folder, self._described())
        except OSError as exc:
            self._disk_off(exc)
            return
        self._drop_gone()

    def _drop_gone(self) -> None:
        """Entries whose files the cap removed (another process's entries may go too)."""
        for name in [n for n, e in self._entries.items() if e.path and not e.path.exists()]:
            entry = self._entries[name]
            if entry.state is None:
                del self._entries[name]
            else:
                entry.path = None

    def _described(self) -> dict[str, object]:
        key = self.key
        return {
            "model": key.label,
            "kv_cache_type": key.kv_cache_type,
            "flash_attn": key.flash_attn,
            "llama_cpp": key.llama_cpp,
        }

    def _disk_off(self, exc: OSError) -> None:
        self._disk_on = False
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "the disk is full" if full else (exc.strerror or str(exc))
        self._notice(
            f"prompt cache: cannot save to {self.limits.folder} ({why}): saving conversations "
            "to disk is off for this session; they are evaluated again after a restart"
        )

    def _scan(self) -> None:
        """Index the saved states of this key (their tokens only); remove what cannot be one."""
        assert self.limits.folder is not None
        for leftover in kv_files.leftovers(self.limits.folder):
            leftover.unlink(missing_ok=True)
        folder = self.limits.folder / self.key.digest
        if not folder.is_dir():
            return
        for path in sorted(folder.glob(f"*{kv_files.SUFFIX}")):
            try:
                header, tokens, _ = kv_files.read_header(path)
                if header.key != self.key.digest:
                    raise kv_files.DamagedEntry(f"{path.name}: saved for another key")
                replies = kv_files.read_replies(path)
                used = path.stat().st_mtime
            except (kv_files.DamagedEntry, OSError) as exc:
                path.unlink(missing_ok=True)
                log.warning("prompt cache: removed %s", exc)
                continue
            name = kv_files.entry_name(tokens)
            entry = _Entry(tokens, None, path, header.state_bytes, used, replies)
            self._entries[name] = entry
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            self.replies.update(entry.replies)


def _common(saved: np.ndarray, prompt: np.ndarray) -> int:
    """How many tokens of `prompt` a restore of `saved` keeps (never the whole prompt)."""
    n = min(len(saved), len(prompt) - 1)
    if n <= 0:
        return 0
    differ = np.flatnonzero(saved[:n] != prompt[:n])
    return int(differ[0]) if differ.size else n


def _replies_in(
    tokens: np.ndarray, replies: Mapping[str, list[int]]
) -> list[tuple[str, list[int]]]:
    """The replies whose exact ids occur, one after another, in `tokens`; or all but the last
    at its very end (a reply's last token is generated but never evaluated)."""
    found = []
    for text, ids in replies.items():
        wanted = np.asarray(ids, dtype=np.int32)
        if not ids or len(ids) > len(tokens) + 1:
            continue
        if len(ids) > 1 and np.array_equal(tokens[len(tokens) - len(ids) + 1 :], wanted[:-1]):
            found.append((text, list(ids)))
            continue
        starts = np.flatnonzero(tokens[: max(0, len(tokens) - len(ids) + 1)] == ids[0])
        if any(np.array_equal(tokens[i : i + len(ids)], wanted) for i in starts):
            found.append((text, list(ids)))
    return found


def _starts(tokens: np.ndarray, prefix: np.ndarray) -> bool:
    return len(prefix) <= len(tokens) and bool(np.array_equal(tokens[: len(prefix)], prefix))


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def describe_limits(limits: CacheLimits) -> str:
    where = f", {format_bytes(limits.disk_bytes)} on disk" if limits.folder else ""
    return f"prompt cache: {format_bytes(limits.ram_bytes)} in RAM{where}"
