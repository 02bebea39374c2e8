"""Saved conversations in SQLite (stdlib sqlite3, WAL, foreign keys, named migrations).

Every message is committed the moment it is complete, so a killed app loses at most the reply
that was being generated. A database that cannot be read is never fatal and never silently
lost: it is renamed to `<name>.corrupt-<timestamp>` and a fresh one is started, with a one-line
notice that says where the old file went.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huozi_local.core.chat.types import ChatMessage, Role, normalize_role
from huozi_local.core.errors import HuoziError
from huozi_local.core.store.migrations import apply_migrations, refuse_newer_schema

BUSY_TIMEOUT_S = 5.0
BUSY_ATTEMPTS = 2
REQUIRED_TABLES = frozenset({"conversations", "messages"})


class DatabaseBusy(HuoziError):
    """Another program held the database's write lock past every retry."""


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: str
    created_at: float
    updated_at: float
    message_count: int = 0


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    position: int
    role: Role
    content: str
    created_at: float
    meta: dict[str, Any] = field(default_factory=dict)

    def as_chat(self) -> ChatMessage:
        return ChatMessage(self.role, self.content)


_CONVERSATION_COLUMNS = (
    "c.id, c.title, c.model, c.created_at, c.updated_at, "
    "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)"
)


class ConversationStore:
    """One database file; safe to call from the UI thread and worker threads alike."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        notice: str | None = None,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self._db = db
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self.path = path
        self.notice = notice
        """Set when the file was unreadable and was set aside: say this line to the user."""

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> ConversationStore:
        """Open (or create) the database; an unreadable one (or one without its tables) is
        backed up and replaced. `busy_timeout_s`: how long one attempt waits for another
        program's write lock."""
        if path.is_dir():
            raise HuoziError(f"conversation database {path} is a folder, not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HuoziError(f"cannot create {path.parent}: {exc.strerror}") from exc
        try:
            return cls(_connect(path, busy_timeout_s), path, busy_timeout_s=busy_timeout_s)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _looks_corrupt(exc):
                raise HuoziError(f"cannot open conversation database {path}: {exc}") from exc
            backup = _set_aside(path)
            notice = (
                f"the conversation database was unreadable ({exc}); it was moved to {backup} "
                "and a new one was started"
            )
            try:
                return cls(
                    _connect(path, busy_timeout_s), path, notice, busy_timeout_s=busy_timeout_s
                )
            except sqlite3.DatabaseError as again:
                raise HuoziError(f"cannot create conversation database {path}: {again}") from again

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a lock held elsewhere or a read-only file is one HuoziError
        line (the caller keeps its data: nothing half-written stays behind)."""
        with self._lock:
            try:
                self._begin()
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise self._failure("cannot write", exc) from exc
                raise

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, retried: each attempt waits `busy_timeout_s` inside SQLite for
        another program (another huozi-local, a DB browser) to release its write lock."""
        for attempt in range(BUSY_ATTEMPTS):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == BUSY_ATTEMPTS - 1:
                    raise
                time.sleep(min(self._busy_timeout_s, 0.5))

    def _failure(self, doing: str, exc: sqlite3.OperationalError) -> HuoziError:
        if _is_busy(exc):
            waited = BUSY_ATTEMPTS * self._busy_timeout_s
            return DatabaseBusy(
                f"the conversation database {self.path} is locked by another program "
                f"(another huozi-local?) for over {waited:.0f} s: close it and try again"
            )
        return HuoziError(f"{doing} the conversation database {self.path}: {exc}")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.OperationalError as exc:
                raise self._failure("cannot read", exc) from exc

    # -- conversations -----------------------------------------------------------------------

    def create_conversation(self, title: str = "", model: str = "") -> Conversation:
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO conversations (title, model, created_at, updated_at) "
                "VALUES (?, ?, ?, ?)",
                (title, model, now, now),
            )
            new_id = cursor.lastrowid
        assert new_id is not None
        return self.conversation(new_id)

    def conversation(self, conversation_id: int) -> Conversation:
        rows = self._query(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = ?",
            (conversation_id,),
        )
        if not rows:
            raise HuoziError(f"no conversation with id {conversation_id}")
        return Conversation(*rows[0])

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        with self._transaction() as db:
            db.execute(
                "UPDATE conversations SET title = ? WHERE id = ?", (title.strip(), conversation_id)
            )
        return self.conversation(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def list_conversations(self) -> list[Conversation]:
        """Most recently active first."""
        rows = self._query(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c "
            "ORDER BY c.updated_at DESC, c.id DESC"
        )
        return [Conversation(*row) for row in rows]

    def search_conversations(self, query: str) -> list[Conversation]:
        """Conversations whose title or any message contains `query` (case-insensitive).

        A substring match rather than FTS5: SQLite's FTS tokenizers split Chinese poorly, and a
        person's own history is small enough to scan.
        """
        needle = query.strip()
        if not needle:
            return self.list_conversations()
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._query(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c "
            "WHERE c.title LIKE ?1 ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
            "WHERE m.conversation_id = c.id AND m.content LIKE ?1 ESCAPE '\\') "
            "ORDER BY c.updated_at DESC, c.id DESC",
            (pattern,),
        )
        return [Conversation(*row) for row in rows]

    # -- messages ----------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        meta: dict[str, Any] | None = None,
    ) -> StoredMessage:
        """Append and commit one complete message; the first user message titles the chat."""
        canonical = normalize_role(role)
        now = time.time()
        with self._transaction() as db:
            (position,) = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone()
            try:
                cursor = db.execute(
                    "INSERT INTO messages (conversation_id, position, role, content, created_at, "
                    "meta) VALUES (?, ?, ?, ?, ?, ?)",
                    (conversation_id, position, canonical, content, now, _dump(meta)),
                )
            except sqlite3.IntegrityError as exc:
                raise HuoziError(f"no conversation with id {conversation_id}") from exc
            db.execute(
                "UPDATE conversations SET updated_at = ?, "
                "title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END WHERE id = ?",
                (now, canonical, _title_from(content), conversation_id),
            )
            new_id = cursor.lastrowid
        assert new_id is not None
        return StoredMessage(new_id, conversation_id, position, canonical, content, now, meta or {})

    def update_last_message(
        self, conversation_id: int, content: str, *, meta: dict[str, Any] | None = None
    ) -> StoredMessage:
        """Replace the text of the newest message (edit and resend)."""
        last = self.last_message(conversation_id)
        if last is None:
            raise HuoziError("the conversation has no message to edit")
        new_meta = last.meta if meta is None else meta
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE messages SET content = ?, meta = ?, created_at = ? WHERE id = ?",
                (content, _dump(new_meta), now, last.id),
            )
            db.execute(
                "UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id)
            )
        return StoredMessage(
            last.id, conversation_id, last.position, last.role, content, now, new_meta
        )

    def delete_last_message(self, conversation_id: int) -> StoredMessage | None:
        """Drop the newest message (regenerate drops the reply it replaces)."""
        last = self.last_message(conversation_id)
        if last is not None:
            with self._transaction() as db:
                db.execute("DELETE FROM messages WHERE id = ?", (last.id,))
        return last

    def last_message(self, conversation_id: int) -> StoredMessage | None:
        found = self.messages(conversation_id, last_only=True)
        return found[0] if found else None

    def messages(self, conversation_id: int, *, last_only: bool = False) -> list[StoredMessage]:
        order = "DESC LIMIT 1" if last_only else "ASC"
        rows = self._query(
            "SELECT id, conversation_id, position, role, content, created_at, meta FROM messages "
            f"WHERE conversation_id = ? ORDER BY position {order}",
            (conversation_id,),
        )
        return [
            StoredMessage(
                id=row[0],
                conversation_id=row[1],
                position=row[2],
                role=row[3],
                content=row[4],
                created_at=row[5],
                meta=_load(row[6]),
            )
            for row in rows
        ]

    # -- export ------------------------------------------------------------------------------

    def export_markdown(self, conversation_id: int) -> str:
        conversation = self.conversation(conversation_id)
        heading = {"system": "系统 System", "user": "用户 User", "assistant": "助手 Assistant"}
        parts = [f"# {conversation.title or 'Untitled conversation'}\n"]
        if conversation.model:
            parts.append(f"*Model: {conversation.model}*\n")
        for message in self.messages(conversation_id):
            parts.append(f"## {heading[message.role]}\n\n{message.content.rstrip()}\n")
        return "\n".join(parts)

    def export_json(self, conversation_id: int) -> str:
        conversation = self.conversation(conversation_id)
        document = {
            "id": conversation.id,
            "title": conversation.title,
            "model": conversation.model,
            "created_at": conversation.created_at,
            "updated_at": conversation.updated_at,
            "messages": [
                {"role": m.role, "content": m.content, "created_at": m.created_at, "meta": m.meta}
                for m in self.messages(conversation_id)
            ],
        }
        return json.dumps(document, ensure_ascii=False, indent=2)


def _connect(path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
    )
    try:
        refuse_newer_schema(db, path)  # before any PRAGMA or migration writes to it
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        (status,) = db.execute("PRAGMA quick_check").fetchone()
        if status != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {status}")
        apply_migrations(db)
        _check_tables(db)
    except BaseException:
        db.close()
        raise
    return db


def _check_tables(db: sqlite3.Connection) -> None:
    """Migrations recorded as done but tables gone (dropped by hand, a foreign tool, a file
    half-restored) fail on the first query: treat it like a corrupt file, set aside and fresh."""
    found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = sorted(REQUIRED_TABLES - found)
    if missing:
        raise sqlite3.DatabaseError(f"the tables {', '.join(missing)} are missing")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _looks_corrupt(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _set_aside(path: Path) -> Path:
    """Rename the unreadable file (and its WAL side files) out of the way, keeping every byte."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while backup.exists():
        counter += 1
        backup = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
    try:
        path.replace(backup)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.replace(backup.with_name(backup.name + suffix))
    except OSError as exc:
        raise HuoziError(
            f"conversation database {path} is unreadable and cannot be moved aside: {exc.strerror}"
        ) from exc
    return backup


def _title_from(text: str) -> str:
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first_line[:40] + ("…" if len(first_line) > 40 else "")


def _dump(meta: dict[str, Any] | None) -> str:
    return json.dumps(meta or {}, ensure_ascii=False)


def _load(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
