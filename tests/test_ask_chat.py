"""`huozi-local ask` and `huozi-local chat` as a user runs them (subprocesses, tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_process import cli

from huozi_local.testing.conversations import Conversation
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

FIELDS = {
    "text",
    "stop_reason",
    "prompt_tokens",
    "evaluated_prompt_tokens",
    "completion_tokens",
    "ttft_s",
    "tokens_per_s",
    "model",
    "plan",
}


@pytest.fixture(scope="module")
def chat_model(tiny_models: TinyModels) -> Path:
    return tiny_models.get("merged", "q4_0", "chat")


def test_ask_streams_the_reply(chat_model: Path, huozi_home: Path) -> None:
    done = cli("ask", "你好", "--model", str(chat_model), home=huozi_home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == RIG_TEXT + "\n"


def test_ask_json_has_every_field(chat_model: Path, huozi_home: Path) -> None:
    done = cli("ask", "你好", "--model", str(chat_model), "--json", "--seed", "7", home=huozi_home)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record.keys() >= FIELDS
    assert record["text"] == RIG_TEXT and record["stop_reason"] == "stop"
    assert record["evaluated_prompt_tokens"] == record["prompt_tokens"] > 0
    assert record["completion_tokens"] == 9
    assert record["plan"]["n_ctx"] > 0


def test_ask_reads_stdin_and_messages_file(
    chat_model: Path, huozi_home: Path, tmp_path: Path, conversations: tuple[Conversation, ...]
) -> None:
    question, follow_up = conversations[3].turns[:2]
    piped = cli("ask", "-", "--model", str(chat_model), "--json", stdin=question, home=huozi_home)
    assert json.loads(piped.stdout)["text"] == RIG_TEXT
    conversation = tmp_path / "conv.json"
    conversation.write_text(
        json.dumps(
            [
                {"role": "系统", "content": "你是一个智能助手"},
                {"role": "user", "content": question},
                {"role": "助手", "content": "好的。"},
                {"role": "user", "content": follow_up},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    done = cli(
        "ask",
        "--messages",
        str(conversation),
        "--model",
        str(chat_model),
        "--json",
        home=huozi_home,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (
        record["text"] == RIG_TEXT
        and record["prompt_tokens"] > json.loads(piped.stdout)["prompt_tokens"]
    )


def test_ask_length_cut(chat_model: Path, huozi_home: Path) -> None:
    done = cli(
        "ask", "hi", "--model", str(chat_model), "--max-tokens", "3", "--json", home=huozi_home
    )
    record = json.loads(done.stdout)
    assert (record["text"], record["stop_reason"], record["completion_tokens"]) == (
        "你好，",
        "length",
        3,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "hi", "--model", "{missing}"], "no such model file"),
        (["ask", "hi"], "huozi-local download"),
        (["ask", "hi", "--model", "{split}"], "huozi-local repair"),
        (["ask", "hi", "--model", "{notgguf}"], "GGUF"),
        (["ask", "--messages", "{badjson}", "--model", "{chat}"], "not valid JSON"),
        (["ask", "--messages", "{badrole}", "--model", "{chat}"], "unknown role"),
        (["ask", "hi", "--model", "{chat}", "--max-tokens", "0"], "--max-tokens"),
        (["chat", "--model", "{missing}"], "no such model file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str],
    message: str,
    chat_model: Path,
    tiny_models: TinyModels,
    huozi_home: Path,
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    (tmp_path / "role.json").write_text('[{"role": "robot", "content": "x"}]', encoding="utf-8")
    (tmp_path / "notes.gguf").write_text("not a model", encoding="utf-8")
    names = {
        "missing": str(tmp_path / "missing.gguf"),
        "split": str(tiny_models.get("split", "q4_0", "none")),
        "notgguf": str(tmp_path / "notes.gguf"),
        "badjson": str(tmp_path / "bad.json"),
        "badrole": str(tmp_path / "role.json"),
        "chat": str(chat_model),
    }
    done = cli(*[a.format(**names) for a in args], home=huozi_home)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_chat_with_piped_lines_and_json(chat_model: Path, huozi_home: Path) -> None:
    stdin = "你好\n第二个问题\n/regen\n/save {out}\n/new\n你好\n"
    out = huozi_home / "saved.json"
    done = cli(
        "chat", "--model", str(chat_model), "--json", stdin=stdin.format(out=out), home=huozi_home
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 4
    assert all(r.keys() >= FIELDS and r["text"] == RIG_TEXT for r in records)
    first, second, regen, fresh = records
    # turn 2 evaluates only what was added; /regen re-evaluates one token; /new starts over
    assert second["evaluated_prompt_tokens"] == second["prompt_tokens"] - (
        first["prompt_tokens"] + first["completion_tokens"]
    )
    assert regen["evaluated_prompt_tokens"] == 1
    assert fresh["prompt_tokens"] == first["prompt_tokens"]
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    autosaved = json.loads((huozi_home / "data" / "chat-autosave.json").read_text("utf-8"))
    assert [m["content"] for m in autosaved][-2:] == ["你好", RIG_TEXT]
    assert len(autosaved) == 3  # system, user, reply: /new started over


def test_chat_plain_output_one_reply_per_line(chat_model: Path, huozi_home: Path) -> None:
    done = cli(
        "chat", "--model", str(chat_model), "--system", "简短回答", stdin="a\nb\n", home=huozi_home
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [RIG_TEXT, RIG_TEXT]


@pytest.mark.parametrize("on_stdin", [False, True])
def test_deeply_nested_messages_json_is_one_line_naming_it_not_a_recursion_traceback(
    on_stdin: bool, chat_model: Path, huozi_home: Path, tmp_path: Path
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.json"
    path.write_text(deep, encoding="utf-8")
    source = "-" if on_stdin else str(path)
    done = cli(
        "ask", "--messages", source, "--model", str(chat_model),
        stdin=deep if on_stdin else "", home=huozi_home,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    where = "stdin" if on_stdin else str(path)
    assert done.stderr == (
        f"huozi-local: {where} is nested too deeply to be a conversation: it must hold a JSON "
        "list of {role, content} objects\n"
    )
