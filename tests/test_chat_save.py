"""`/save` in `huozi-local chat`, through a real chat child process run in a folder of its own.

`/save .` and `/save /` ended the chat with a traceback (a path with an empty name), `/save ..`
left a `...tmp` file behind, and `/save sub/` wrote a file named `sub`. A directory (one that
exists, or any path typed with a trailing slash) now gets the conversation under the default
name; a save that fails is one line, the chat goes on, and no temporary file stays.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

pytestmark = pytest.mark.slow

SAVED = re.compile(r"^saved 2 messages to (.*huozi-chat-\d{8}-\d{6}\.json)$")


@pytest.fixture(scope="module")
def chat_model(tiny_models: TinyModels) -> Path:
    return tiny_models.get("merged", "q4_0", "chat")


def chat_in(folder: Path, typed: str, model: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """`huozi-local chat` with piped lines, its working folder `folder` (where `/save .` goes)."""
    return subprocess.run(
        [sys.executable, "-m", "huozi_local", "chat", "--model", str(model)],
        input=typed,
        capture_output=True,
        text=True,
        cwd=folder,
        env={**os.environ, "HUOZI_HOME": str(home)},
        timeout=300,
    )


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "typed, into",
    [
        (".", "work"),
        ("..", "."),
        ("sub/", "work/sub"),  # missing: a trailing slash says it is a folder, so it is made
        ("folder", "work/folder"),  # an existing folder, typed without the slash
        ("{root}/work/folder/", "work/folder"),
    ],
)
def test_save_to_a_directory_saves_into_it_under_the_default_name(
    typed: str, into: str, chat_model: Path, huozi_home: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    work = root / "work"
    (work / "folder").mkdir(parents=True)
    done = chat_in(work, f"你好\n/save {typed.format(root=root)}\n再见\n", chat_model, huozi_home)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert not leftovers(tmp_path)
    first, note, last = done.stdout.splitlines()
    assert first == last == RIG_TEXT
    match = SAVED.match(note)
    assert match, note
    saved = (work / match.group(1)).resolve()
    assert saved.parent == (root / into).resolve()
    rows = json.loads(saved.read_text(encoding="utf-8"))
    assert [r["content"] for r in rows if r["role"] != "system"] == ["你好", RIG_TEXT]
    assert [p.name for p in (root / into).iterdir() if p.is_file()] == [saved.name]


def test_save_to_the_root_folder_names_a_file_in_it() -> None:
    """`/save /` crashed like `/save .`; the folder is not written to in a test (it is `/`)."""
    from huozi_local.commands._chat_repl import save_target

    target = save_target("/")
    assert target.parent == Path("/") and SAVED.match(f"saved 2 messages to {target}")


@pytest.mark.parametrize("case", ["under_a_file", "name_too_long"])
def test_a_save_that_fails_is_one_line_leaves_no_temporary_file_and_the_chat_goes_on(
    case: str, chat_model: Path, huozi_home: Path, tmp_path: Path
) -> None:
    """`name_too_long` fails at the rename, after the temporary file was written."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("a file, not a folder", encoding="utf-8")
    target = "notes.txt/chat.json" if case == "under_a_file" else "x" * 300 + ".json"
    done = chat_in(work, f"你好\n/save {target}\n再见\n", chat_model, huozi_home)
    assert done.returncode == 0, done.stderr
    first, note, last = done.stdout.splitlines()
    assert first == last == RIG_TEXT
    assert note.startswith(f"cannot save to {target}: ")
    assert [p.name for p in work.iterdir()] == ["notes.txt"]
