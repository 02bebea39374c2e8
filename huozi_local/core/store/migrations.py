"""The conversation database's schema, as an ordered list of named migration functions.

Each migration runs once, inside a transaction, and its name is recorded in `_migrations`
(simonw/llm's scheme): a database made by any older release is brought forward step by step, and
a step is never renamed or reordered once released, only appended.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from huozi_local.core.errors import HuoziError

Migration = Callable[[sqlite3.Connection], None]


def m001_conversations(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (conversation_id, position)
        )
        """
    )


def m002_message_meta(db: sqlite3.Connection) -> None:
    """Reply statistics (tokens/s, stop reason) travel with the message for the status bar."""
    db.execute("ALTER TABLE messages ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'")


def m003_recent_index(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX conversations_by_update ON conversations(updated_at DESC)")


MIGRATIONS: tuple[Migration, ...] = (m001_conversations, m002_message_meta, m003_recent_index)


class NewerDatabase(HuoziError):
    """The database records schema steps this release does not have."""


def refuse_newer_schema(db: sqlite3.Connection, path: Path) -> None:
    """Raise NewerDatabase when a newer release wrote `db`.

    Steps are only ever appended, so a name this release does not know means a schema it cannot
    write safely (a column it does not fill, a table rebuilt): opening it anyway failed later,
    at the first write, with a raw IntegrityError. This only reads, so the file stays as it is
    for the newer release.
    """
    listed = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
    ).fetchone()
    if listed is None:
        return
    known = {migration.__name__ for migration in MIGRATIONS}
    names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    newer = [name for name in names if name not in known]
    if newer:
        raise NewerDatabase(
            f"the conversation database {path} was written by a newer huozi-local (its schema "
            f"steps {', '.join(newer)} are unknown to this one); it was left as it is: upgrade "
            "huozi-local to open it"
        )


def apply_migrations(db: sqlite3.Connection) -> list[str]:
    """Run the migrations this database has not seen yet; return their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied: list[str] = []
    for migration in MIGRATIONS:
        name = migration.__name__
        if name in done:
            continue
        # The connection is in autocommit mode (isolation_level=None), so DDL and the record of
        # it share one explicit transaction: a crash mid-migration leaves the old schema intact.
        db.execute("BEGIN IMMEDIATE")
        try:
            migration(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, julianday('now'))", (name,)
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(name)
    return applied
