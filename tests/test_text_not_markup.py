"""Text from a person, a model file or a server is shown as it is by `chat` and `ask`, never read
as rich markup (`[/INST]` made rich raise; `[bold]x[/]` lost its tags; `:fire:` became an emoji).

`chat` prints its first line (the model's name) only on a terminal: those tests give the child a
pseudo-terminal as stdin, as a person's shell does, and read its output from pipes.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_process import cli
from odd_text import ODD, ODD_NAME, with_odd_header

from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def odd_model(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tiny_models.get("merged", "q4_0", "chat")
    return with_odd_header(src, tmp_path_factory.mktemp("odd") / "odd.gguf")


def chat_on_a_terminal(*args: str, home: Path, typed: bytes) -> subprocess.CompletedProcess[str]:
    """`huozi-local chat` with a terminal as stdin (interactive mode), `typed` at its prompt."""
    master, slave = pty.openpty()
    env = {**os.environ, "HUOZI_HOME": str(home), "COLUMNS": "200"}
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "huozi_local", "chat", *args],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    finally:
        os.close(slave)
    try:
        os.write(master, typed)
        out, err = child.communicate(timeout=300)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_chat_system_prompt_with_brackets_is_shown_verbatim(
    odd_model: Path, huozi_home: Path
) -> None:
    """`/system answer in [/INST] format` ended the chat with a rich MarkupError traceback."""
    saved = huozi_home / "saved.json"
    typed = f"/system answer in {ODD} format\n你好\n/save {saved}\n"
    done = cli("chat", "--model", str(odd_model), stdin=typed, home=huozi_home)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.splitlines() == [
        f"system prompt: answer in {ODD} format",
        RIG_TEXT,
        f"saved 2 messages to {saved}",
    ]
    rows = json.loads(saved.read_text(encoding="utf-8"))
    assert rows[0] == {"role": "system", "content": f"answer in {ODD} format"}


def test_chat_shows_a_model_name_with_brackets_verbatim(odd_model: Path, huozi_home: Path) -> None:
    """The first line of an interactive chat is the model's general.name: it crashed the chat
    before the first prompt."""
    done = chat_on_a_terminal("--model", str(odd_model), home=huozi_home, typed=b"/quit\n")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith(f"{ODD_NAME} · context "), done.stdout


@pytest.fixture(scope="module")
def odd_server(odd_model: Path) -> Iterator[str]:
    """Our OpenAI-compatible server on 127.0.0.1, serving a model whose id holds markup."""
    from api_server import running_server

    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.chat.loader import LoadOptions

    engine = LlamaEngine.load(odd_model, LoadOptions(n_ctx=512))
    try:
        with running_server(engine, model_id=f"huozi3:{ODD}") as server:
            yield server.url
    finally:
        engine.close()


def test_chat_endpoint_shows_a_remote_model_id_with_brackets_verbatim(
    odd_server: str, huozi_home: Path
) -> None:
    """`chat --endpoint` printed the server's model id as markup and crashed at start."""
    done = chat_on_a_terminal("--endpoint", odd_server, home=huozi_home, typed=b"hi\n/quit\n")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith(f"huozi3:{ODD} · context "), done.stdout
    assert RIG_TEXT in done.stdout


def test_ask_reports_a_model_name_with_brackets_verbatim(odd_model: Path, huozi_home: Path) -> None:
    done = cli("ask", "你好", "--model", str(odd_model), "--json", home=huozi_home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == ODD_NAME
