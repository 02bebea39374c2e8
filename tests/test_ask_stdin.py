"""`ask` reads stdin only when asked: `ask -` (the question), `ask --messages -` (the
conversation), or a plain `ask` with neither TEXT nor --messages and piped input (`--help` has
promised that one).

`ask --messages f.json` read stdin whenever it was not a terminal: under `ssh host cmd`, cron
or CI (a stdin nobody closes) it never returned, and piped text became one more message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import cli

from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

pytestmark = pytest.mark.slow

HANG_GUARD_S = 120  # far above a normal run: only a hang reaches it
CONVERSATION = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def chat_model(tiny_models: TinyModels) -> Path:
    return tiny_models.get("merged", "q4_0", "chat")


@pytest.fixture
def messages_file(tmp_path: Path) -> Path:
    path = tmp_path / "conversation.json"
    path.write_text(json.dumps(CONVERSATION, ensure_ascii=False), encoding="utf-8")
    return path


def ask_with_a_stdin_left_open(*args: str, home: Path, piped: str) -> tuple[int, str, str]:
    """`huozi-local ask` with `piped` written to a stdin pipe that is never closed while it
    runs, as `ssh host cmd`, cron and CI runners leave it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "huozi_local", "ask", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HUOZI_HOME": str(home)},
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        child.stdin.write(piped.encode())
        child.stdin.flush()
        try:
            code = child.wait(HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            pytest.fail("ask waited for a stdin that nobody closes")
        return code, child.stdout.read().decode(), child.stderr.read().decode()
    finally:
        child.stdin.close()
        child.stdout.close()
        child.stderr.close()


def prompt_tokens(*args: str, home: Path, stdin: str = "") -> int:
    done = cli("ask", *args, "--json", stdin=stdin, home=home)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["text"] == RIG_TEXT
    tokens: int = record["prompt_tokens"]
    return tokens


def test_ask_messages_file_never_reads_a_stdin_left_open(
    chat_model: Path, messages_file: Path, huozi_home: Path
) -> None:
    model = ("--model", str(chat_model))
    code, out, err = ask_with_a_stdin_left_open(
        "--messages", str(messages_file), *model, "--json", home=huozi_home, piped="另一个问题\n"
    )
    assert code == 0, err
    alone = prompt_tokens("--messages", str(messages_file), *model, home=huozi_home)
    assert json.loads(out)["prompt_tokens"] == alone  # the piped text was not added


def test_ask_messages_dash_reads_the_conversation_from_stdin(
    chat_model: Path, messages_file: Path, huozi_home: Path
) -> None:
    model = ("--model", str(chat_model))
    from_file = prompt_tokens("--messages", str(messages_file), *model, home=huozi_home)
    piped = json.dumps(CONVERSATION, ensure_ascii=False)
    assert prompt_tokens("--messages", "-", *model, stdin=piped, home=huozi_home) == from_file


def test_ask_dash_adds_the_piped_question_to_a_messages_file(
    chat_model: Path, messages_file: Path, huozi_home: Path
) -> None:
    model = ("--model", str(chat_model))
    alone = prompt_tokens("--messages", str(messages_file), *model, home=huozi_home)
    both = prompt_tokens(
        "-", "--messages", str(messages_file), *model, stdin="另一个问题", home=huozi_home
    )
    assert both > alone


def test_plain_ask_takes_piped_input_as_the_question(chat_model: Path, huozi_home: Path) -> None:
    """What `ask --help` promises: no TEXT and no --messages, and stdin is a pipe."""
    asked = prompt_tokens("--model", str(chat_model), stdin="你好", home=huozi_home)
    assert asked == prompt_tokens("你好", "--model", str(chat_model), home=huozi_home)


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--messages", "-", "-"], "[]", "not both"),
        (["--messages", "-"], "[{", "stdin is not valid JSON"),
        (["--messages", "-"], '[{"role": "robot", "content": "x"}]', "unknown role"),
    ],
)
def test_bad_messages_on_stdin_are_one_line_and_exit_2(
    args: list[str], stdin: str, message: str, chat_model: Path, huozi_home: Path
) -> None:
    done = cli("ask", *args, "--model", str(chat_model), stdin=stdin, home=huozi_home)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
