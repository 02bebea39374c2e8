"""Saved conversations: real SQLite files, migrations, crash durability, corrupt-file recovery."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.core.store.migrations import MIGRATIONS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConversationStore]:
    opened = ConversationStore.open(tmp_path / "data" / "huozi.sqlite3")
    yield opened
    opened.close()


def test_conversation_lifecycle(store: ConversationStore) -> None:
    first = store.create_conversation(model="huozi3:q2_k")
    store.add_message(first.id, "user", "你好，请介绍一下哈尔滨。\n第二行")
    store.add_message(first.id, "助手", "哈尔滨是黑龙江省的省会。", meta={"tokens_per_s": 12.5})
    second = store.create_conversation()
    store.add_message(second.id, "user", "What is MoE?")

    listed = store.list_conversations()
    assert [c.id for c in listed] == [second.id, first.id]
    assert listed[1].title == "你好，请介绍一下哈尔滨。"  # the first user line titles the chat
    assert listed[1].message_count == 2
    messages = store.messages(first.id)
    assert [(m.role, m.position) for m in messages] == [("user", 0), ("assistant", 1)]
    assert messages[1].meta == {"tokens_per_s": 12.5}

    store.rename_conversation(first.id, "  哈尔滨  ")
    assert store.conversation(first.id).title == "哈尔滨"
    store.delete_conversation(first.id)
    assert [c.id for c in store.list_conversations()] == [second.id]
    assert store.messages(first.id) == []  # cascaded
    with pytest.raises(HuoziError, match="no conversation"):
        store.add_message(first.id, "user", "orphan")


def test_search_matches_titles_and_message_text(store: ConversationStore) -> None:
    a = store.create_conversation(title="旅行计划")
    store.add_message(a.id, "user", "去哪里玩？")
    b = store.create_conversation()
    store.add_message(b.id, "user", "解释混合专家模型")
    store.add_message(b.id, "assistant", "Mixtral 使用 8 个专家，100% 稀疏")
    assert [c.id for c in store.search_conversations("旅行")] == [a.id]
    assert [c.id for c in store.search_conversations("专家")] == [b.id]
    assert [c.id for c in store.search_conversations("mixtral")] == [b.id]  # case-insensitive
    assert [c.id for c in store.search_conversations("100%")] == [b.id]
    assert store.search_conversations("0%稀") == []  # % is literal, not a wildcard
    assert len(store.search_conversations("  ")) == 2


def test_edit_and_drop_the_last_message(store: ConversationStore) -> None:
    c = store.create_conversation()
    store.add_message(c.id, "user", "原来的问题")
    store.add_message(c.id, "assistant", "旧回答")
    dropped = store.delete_last_message(c.id)
    assert dropped is not None and dropped.content == "旧回答"
    edited = store.update_last_message(c.id, "改过的问题")
    assert edited.role == "user"
    assert [m.content for m in store.messages(c.id)] == ["改过的问题"]
    store.add_message(c.id, "assistant", "新回答")
    assert [m.position for m in store.messages(c.id)] == [0, 1]


def test_exports(store: ConversationStore) -> None:
    c = store.create_conversation(model="huozi3:q4_0")
    store.add_message(c.id, "user", "你好")
    store.add_message(c.id, "assistant", "**你好**！有什么可以帮你？")
    markdown = store.export_markdown(c.id)
    assert markdown.startswith("# 你好\n")
    assert "## 用户 User\n\n你好\n" in markdown
    assert "## 助手 Assistant\n\n**你好**！有什么可以帮你？\n" in markdown
    document = json.loads(store.export_json(c.id))
    assert document["model"] == "huozi3:q4_0"
    assert [(m["role"], m["content"]) for m in document["messages"]] == [
        ("user", "你好"),
        ("assistant", "**你好**！有什么可以帮你？"),
    ]
    assert "你好" in store.export_json(c.id)  # not \u-escaped


def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    ConversationStore.open(path).close()
    ConversationStore.open(path).close()
    db = sqlite3.connect(path)
    names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in MIGRATIONS]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_killed_process_keeps_every_completed_message(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from huozi_local.core.store.conversations import ConversationStore\n"
        f"s = ConversationStore.open(Path({str(path)!r}))\n"
        "c = s.create_conversation()\n"
        "s.add_message(c.id, 'user', '问题')\n"
        "s.add_message(c.id, 'assistant', '完整的回答')\n"
        "os._exit(9)\n"  # no close, no atexit: like a kill
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    reopened = ConversationStore.open(path)
    (conversation,) = reopened.list_conversations()
    assert [m.content for m in reopened.messages(conversation.id)] == ["问题", "完整的回答"]
    reopened.close()


def test_missing_database_starts_fresh_without_notice(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "huozi.sqlite3"
    store = ConversationStore.open(path)
    assert store.notice is None
    assert store.list_conversations() == []
    assert path.exists()
    store.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"this is not a database at all" * 200),
        lambda p: p.write_bytes(p.read_bytes()[:100] + b"\xff" * 4000),  # header kept, pages torn
    ],
    ids=["garbage", "torn-pages"],
)
def test_corrupt_database_is_kept_as_backup_and_replaced(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "huozi.sqlite3"
    store = ConversationStore.open(path)
    c = store.create_conversation()
    store.add_message(c.id, "user", "要保留的文字")
    store.close()
    damage(path)  # type: ignore[operator]
    damaged_bytes = path.read_bytes()

    fresh = ConversationStore.open(path)
    backups = list(tmp_path.glob("huozi.sqlite3.corrupt-*"))
    assert len(backups) == 1 and not backups[0].name.endswith(("-wal", "-shm"))
    assert backups[0].read_bytes() == damaged_bytes  # every byte kept
    assert fresh.notice is not None and str(backups[0]) in fresh.notice
    assert "\n" not in fresh.notice
    assert fresh.list_conversations() == []
    fresh.close()


def test_database_path_that_is_a_folder_is_one_clear_line(tmp_path: Path) -> None:
    folder = tmp_path / "huozi.sqlite3"
    folder.mkdir()
    with pytest.raises(HuoziError, match="is a folder"):
        ConversationStore.open(folder)


def test_database_locked_by_another_process_is_retried_then_one_line(tmp_path: Path) -> None:
    """Another program holding the write lock past every retry was an OperationalError
    traceback; now it is a HuoziError naming the file, and the store works once it is free."""
    path = tmp_path / "huozi.sqlite3"
    store = ConversationStore.open(path, busy_timeout_s=0.05)
    c = store.create_conversation()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "db.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"  # hold the lock until the test says so
            "db.execute('ROLLBACK')\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(HuoziError) as caught:
            store.add_message(c.id, "user", "锁住了")
        message = str(caught.value)
        assert "locked by another program" in message and str(path) in message
        assert "\n" not in message
        assert store.messages(c.id) == []  # reads still work in WAL mode; nothing half-written
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(60)
    store.add_message(c.id, "user", "现在可以了")
    assert [m.content for m in store.messages(c.id)] == ["现在可以了"]
    store.close()


@pytest.mark.parametrize("dropped", ["messages", "conversations"])
def test_database_without_its_tables_is_moved_aside_like_a_corrupt_one(
    tmp_path: Path, dropped: str
) -> None:
    """The migrations said done but a table was gone: every query failed with an
    OperationalError traceback ('no such table')."""
    path = tmp_path / "huozi.sqlite3"
    ConversationStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute(f"DROP TABLE {dropped}")
    db.commit()
    db.close()

    fresh = ConversationStore.open(path)
    backups = tmp_path.glob("huozi.sqlite3.corrupt-*")
    (backup,) = [p for p in backups if not p.name.endswith(("-wal", "-shm"))]
    assert fresh.notice is not None and str(backup) in fresh.notice and dropped in fresh.notice
    c = fresh.create_conversation()
    fresh.add_message(c.id, "user", "新的开始")
    assert len(fresh.list_conversations()) == 1
    fresh.close()


HANG_GUARD_S = 120  # far above the app's start: only an app that opened reaches it


def written_by_a_newer_release(path: Path) -> None:
    """A database as a later release leaves it: one more migration recorded, and a table rebuilt
    with a column this release does not fill (inserting without it breaks NOT NULL)."""
    ConversationStore.open(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        """
        PRAGMA foreign_keys = OFF;
        BEGIN;
        CREATE TABLE conversations_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '', workspace TEXT NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL
        );
        DROP TABLE conversations;
        ALTER TABLE conversations_new RENAME TO conversations;
        INSERT INTO _migrations (name, applied_at) VALUES ('m004_workspaces', julianday('now'));
        COMMIT;
        """
    )
    db.close()


def test_database_from_a_newer_release_is_one_line_and_left_untouched(tmp_path: Path) -> None:
    """Before: it opened, then the first new conversation raised a raw sqlite3.IntegrityError
    (NOT NULL constraint failed: conversations.workspace)."""
    path = tmp_path / "huozi.sqlite3"
    written_by_a_newer_release(path)
    before = path.read_bytes()
    with pytest.raises(HuoziError) as caught:
        ConversationStore.open(path).create_conversation("你好")
    message = str(caught.value)
    assert str(path) in message and "newer huozi-local" in message and "m004_workspaces" in message
    assert "\n" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huozi.sqlite3"]


def test_app_on_a_database_from_a_newer_release_exits_2_with_one_line(huozi_home: Path) -> None:
    path = Paths.from_env().database_file
    path.parent.mkdir(parents=True)
    written_by_a_newer_release(path)
    try:  # before, the app opened on it (and failed later, at the first new conversation)
        done = subprocess.run(
            [sys.executable, "-m", "huozi_local", "tui"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, "HUOZI_HOME": str(huozi_home)},
            timeout=HANG_GUARD_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the app opened on a database it cannot write")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"huozi-local: the conversation database {path}")
