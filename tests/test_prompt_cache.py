"""The prompt cache and the growing context, with the real engine and the tiny models.

Restoring must be exact: a restored KV state gives bit for bit the logits that evaluating the
same tokens gives, and so the same greedy reply. A damaged cache costs only time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from huozi_local.core.chat import kv_files
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.prompt_cache import (
    MIN_ENTRY_TOKENS,
    CacheLimits,
    PromptCache,
    cache_key,
)
from huozi_local.core.chat.types import (
    ChatMessage,
    Notice,
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
    collect_reply,
)
from huozi_local.core.gguf.header import read_gguf
from huozi_local.testing.conversations import CONVERSATIONS
from huozi_local.testing.tiny_model import TinyModels

pytestmark = pytest.mark.slow
GREEDY = SamplingOptions(temperature=0.0, max_tokens=12)
ONE_TOKEN = SamplingOptions(temperature=0.0, max_tokens=1)
MiB = 1024**2


def history(index: int, turns: int = 6) -> list[ChatMessage]:
    """A long conversation of the project's own Chinese text (a few hundred tokens)."""
    conversation = CONVERSATIONS[index % len(CONVERSATIONS)]
    messages = [ChatMessage("system", f"你是第{index}号助手")]
    for turn in range(turns):
        question = conversation.turns[turn % len(conversation.turns)]
        messages.append(ChatMessage("user", f"{question}（第{turn}轮）"))
        messages.append(ChatMessage("assistant", "好的。" + question[::-1]))
    return messages


def ask(messages: list[ChatMessage], text: str) -> list[ChatMessage]:
    return [*messages, ChatMessage("user", text)]


@pytest.fixture(scope="module")
def model(tiny_models: TinyModels) -> Path:
    return tiny_models.get("merged", "q4_0", "none")


def engine_with(
    model: Path,
    folder: Path | None,
    *,
    ram: int = 64 * MiB,
    disk: int = 256 * MiB,
    n_ctx: int = 2048,
    capacity: int | None = None,
) -> LlamaEngine:
    gguf = read_gguf(model)
    key = cache_key(gguf, kv_cache_type="f16", flash_attn=False)
    cache = PromptCache(key, CacheLimits(ram, disk, folder))
    return LlamaEngine.load(
        gguf, LoadOptions(n_ctx=n_ctx, seed=1), capacity=capacity, prompt_cache=cache
    )


@pytest.fixture
def plain(model: Path) -> Iterator[LlamaEngine]:
    """The same model with no cache and a fixed context: what evaluating gives."""
    engine = LlamaEngine.load(model, LoadOptions(n_ctx=2048, seed=1))
    yield engine
    engine.close()


def reply(
    engine: LlamaEngine, messages: list[ChatMessage], sampling: SamplingOptions
) -> ReplyResult:
    return collect_reply(engine.stream_reply(messages, sampling))


def test_a_state_restored_from_disk_answers_exactly_as_evaluating(
    model: Path, tmp_path: Path, plain: LlamaEngine
) -> None:
    first = history(0)
    engine = engine_with(model, tmp_path)
    opened = reply(engine, ask(first, "继续"), GREEDY)
    assert opened.restored_prompt_tokens == 0
    engine.close()  # the conversation goes to disk
    (saved,) = list(kv_files.entry_files(tmp_path))
    # The reply's exact ids are saved with it: a prompt built in a new run matches to the end.
    plain.remember_replies(kv_files.read_replies(saved))

    later = engine_with(model, tmp_path)  # a new run, as after a restart
    follow_up = [
        *ask(first, "继续"),
        ChatMessage("assistant", opened.text),
        ChatMessage("user", "再来"),
    ]
    restored = reply(later, follow_up, ONE_TOKEN)
    assert restored.restored_prompt_tokens > restored.prompt_tokens - 20
    assert restored.evaluated_prompt_tokens < 20
    assert later.prompt_cache is not None and later.prompt_cache.last.source == "disk"
    restored_logits = later.last_logits()

    evaluated = reply(plain, follow_up, ONE_TOKEN)
    assert evaluated.evaluated_prompt_tokens == evaluated.prompt_tokens
    assert restored_logits == plain.last_logits()  # bit for bit
    later.clear_cache()
    plain.clear_cache()
    assert reply(later, follow_up, GREEDY).text == reply(plain, follow_up, GREEDY).text
    later.close()


def test_switching_between_two_conversations_restores_from_ram(model: Path) -> None:
    engine = engine_with(model, None)  # no disk tier: this is the RAM one
    a, b = history(1), history(2)
    first_a = reply(engine, ask(a, "你好"), GREEDY)
    reply(engine, ask(b, "你好"), GREEDY)  # leaving a: its state is kept
    back = [*ask(a, "你好"), ChatMessage("assistant", first_a.text), ChatMessage("user", "然后呢")]
    again = reply(engine, back, GREEDY)
    cache = engine.prompt_cache
    assert cache is not None and cache.last.source == "ram"
    assert again.restored_prompt_tokens >= again.prompt_tokens - 20
    assert {where for _, where in cache.entries()} == {"ram"}
    engine.close()


def test_a_regenerate_keeps_the_live_cache_and_saves_nothing(model: Path) -> None:
    engine = engine_with(model, None)
    messages = ask(history(3), "写一首诗")
    reply(engine, messages, GREEDY)
    again = reply(engine, messages, GREEDY)  # the same turn answered again
    assert again.evaluated_prompt_tokens == 1 and again.restored_prompt_tokens == 0
    assert engine.prompt_cache is not None and engine.prompt_cache.entries() == []
    engine.close()


def test_the_context_grows_with_the_conversation_and_answers_the_same(
    model: Path, plain: LlamaEngine
) -> None:
    growing = engine_with(model, None, n_ctx=256, capacity=2048)
    assert (growing.allocated_n_ctx, growing.n_ctx) == (256, 2048)
    long = ask(history(4, turns=12), "总结一下")
    answered = reply(growing, long, ONE_TOKEN)
    assert answered.prompt_tokens > 256 and growing.allocated_n_ctx >= answered.prompt_tokens
    assert growing.growth_steps >= 1
    grown = growing.last_logits()
    reply(plain, long, ONE_TOKEN)
    assert grown == plain.last_logits()  # moved to a larger context bit for bit
    # A reply that outgrows the context mid-way grows it again and goes on.
    small = engine_with(model, None, n_ctx=256, capacity=1024)
    loop = reply(
        small, ask(history(5, turns=2), "说很多"), SamplingOptions(temperature=0.0, max_tokens=700)
    )
    assert loop.completion_tokens + loop.prompt_tokens > 256 and small.growth_steps >= 1
    for engine in (growing, small):
        engine.close()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign", "garbage"])
def test_a_damaged_entry_is_ignored_removed_and_the_prompt_evaluated(
    model: Path,
    tmp_path: Path,
    plain: LlamaEngine,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    messages = ask(history(6), "你好")
    engine = engine_with(model, tmp_path)
    reply(engine, messages, ONE_TOKEN)
    engine.close()
    (entry,) = list(kv_files.entry_files(tmp_path))
    data = bytearray(entry.read_bytes())
    if damage == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        data[-100] ^= 0x55  # inside the KV data: llama.cpp itself would take it
        entry.write_bytes(data)
    elif damage == "foreign":
        data[8:40] = b"0" * 32  # saved for another model
        entry.write_bytes(data)
    else:
        entry.write_bytes(os.urandom(len(data)))
    caplog.set_level(logging.WARNING, logger="huozi_local")
    later = engine_with(model, tmp_path)
    result = reply(
        later, [*messages, ChatMessage("assistant", "好"), ChatMessage("user", "嗯")], ONE_TOKEN
    )
    assert result.restored_prompt_tokens == 0
    assert result.evaluated_prompt_tokens == result.prompt_tokens  # evaluated as without a cache
    assert not entry.exists()
    assert [r for r in caplog.records if "prompt cache" in r.getMessage()], "no line in the log"
    later.close()


def test_caps_spill_ram_to_disk_and_evict_the_least_recently_used(
    model: Path, tmp_path: Path
) -> None:
    one = engine_with(model, tmp_path, ram=0, disk=256 * MiB)  # nothing stays in RAM
    reply(one, ask(history(7), "一"), ONE_TOKEN)
    reply(one, ask(history(8), "二"), ONE_TOKEN)  # leaving 7: straight to disk
    assert one.prompt_cache is not None and one.prompt_cache.entries()
    assert {where for _, where in one.prompt_cache.entries()} == {"disk"}
    one.close()
    sizes = [p.stat().st_size for p in kv_files.entry_files(tmp_path)]
    assert len(sizes) == 2
    # A cap that holds one entry: the least recently used goes first.
    capped = engine_with(model, tmp_path, ram=0, disk=max(sizes) + 1000)
    reply(capped, ask(history(9), "三"), ONE_TOKEN)
    capped.close()
    left = list(kv_files.entry_files(tmp_path))
    assert len(left) == 1
    _, tokens, _ = kv_files.read_header(left[0])
    newest = engine_with(model, None)
    expected = newest.prompt_tokens(ask(history(9), "三"))
    newest.close()
    assert tokens.tolist()[: len(expected) - 1] == expected[:-1]


def test_short_prompts_are_not_worth_saving(model: Path, tmp_path: Path) -> None:
    engine = engine_with(model, tmp_path)
    reply(engine, [ChatMessage("user", "你好")], ONE_TOKEN)
    assert len(engine.cached_tokens) < MIN_ENTRY_TOKENS
    engine.close()
    assert list(kv_files.entry_files(tmp_path)) == []


FULL_DISK = """
import resource, signal, sys
from huozi_local.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
sys.exit(main(sys.argv[1:]))
"""


def test_a_disk_that_refuses_the_write_turns_saving_off_with_one_notice(
    model: Path, huozi_home: Path, tmp_path: Path
) -> None:
    """A file size limit makes the write fail partway, as a full disk does: the reply is given,
    one notice says saving is off, and no partial file is left."""
    import json

    conversation = tmp_path / "conversation.json"
    rows = [{"role": m.role, "content": m.content} for m in ask(history(10), "你好")]
    conversation.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    args = ["ask", "--messages", str(conversation), "--model", str(model), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args, "--max-tokens", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "HUOZI_HOME": str(huozi_home)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["completion_tokens"] == 4
    notices = [line for line in done.stderr.splitlines() if "prompt cache" in line]
    assert len(notices) == 1 and "saving conversations to disk is off" in notices[0]
    folder = huozi_home / "cache" / "prompts"
    assert list(kv_files.entry_files(folder)) == [] and list(kv_files.leftovers(folder)) == []


def test_a_full_disk_notice_reaches_the_reply_as_an_event(model: Path, tmp_path: Path) -> None:
    """Without a notice callback (the app), the cache's notice comes with the next reply."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    engine = engine_with(model, blocker, ram=0)
    reply(engine, ask(history(11), "一"), ONE_TOKEN)
    events: list[ReplyEvent] = list(engine.stream_reply(ask(history(12), "二"), ONE_TOKEN))
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "saving conversations to disk is off" in notices[0]
    assert isinstance(events[-1], ReplyResult)
    events = list(engine.stream_reply(ask(history(13), "三"), ONE_TOKEN))
    assert not [e for e in events if isinstance(e, Notice)]  # said once
    engine.close()


def test_ask_twice_with_the_same_history_restores_it_and_cache_lists_and_clears(
    model: Path, huozi_home: Path, tmp_path: Path
) -> None:
    """`ask --messages` in two runs: the second evaluates only what the first did not see, says
    so in --json, and `huozi-local cache` shows what is kept and removes it."""
    import json

    from cli_process import cli

    conversation = tmp_path / "conversation.json"
    rows = [{"role": m.role, "content": m.content} for m in ask(history(14), "你好")]
    conversation.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    args = ("ask", "--messages", str(conversation), "--model", str(model), "--json")
    first = json.loads(cli(*args, "--max-tokens", "4", home=huozi_home).stdout)
    second = json.loads(cli(*args, "--max-tokens", "4", home=huozi_home).stdout)
    assert first["restored_prompt_tokens"] == 0
    assert first["evaluated_prompt_tokens"] == first["prompt_tokens"]
    assert second["restored_prompt_tokens"] == second["prompt_tokens"] - 1
    assert second["evaluated_prompt_tokens"] == 1
    assert second["text"] == first["text"]

    listed = cli("cache", "--json", home=huozi_home)
    (row,) = json.loads(listed.stdout)
    assert row["entries"] == 1 and row["model"] == str(model) and row["bytes"] > 0
    assert "1 conversations" in cli("cache", home=huozi_home).stdout
    cleared = json.loads(cli("cache", "--clear", "--json", home=huozi_home).stdout)
    assert cleared == {"removed": 1, "bytes": row["bytes"]}
    assert json.loads(cli("cache", "--json", home=huozi_home).stdout) == []
    off = huozi_home / "config" / "config.toml"
    off.parent.mkdir(parents=True, exist_ok=True)
    off.write_text("prompt_cache = false\n", encoding="utf-8")
    cli(*args, "--max-tokens", "4", home=huozi_home)
    assert json.loads(cli("cache", "--json", home=huozi_home).stdout) == []  # off: nothing kept


def test_the_server_keeps_each_clients_history_apart(model: Path) -> None:
    """Two API clients taking turns with different histories: each one's next request restores
    its own history instead of evaluating it again."""
    import openai
    from api_server import running_server
    from openai.types.chat import ChatCompletionMessageParam

    engine = engine_with(model, None)

    def rows(messages: list[ChatMessage]) -> list[ChatCompletionMessageParam]:
        return [{"role": m.role, "content": m.content} for m in messages]  # type: ignore[misc]

    with running_server(engine) as server:
        client = openai.OpenAI(base_url=server.url, api_key="EMPTY")
        one, two = ask(history(15), "你好"), ask(history(16), "你好")
        for messages in (one, two):
            client.chat.completions.create(
                model=server.model_id, messages=rows(messages), max_tokens=8
            )
        answered = server.backend.results[0].text
        follow_up = [*one, ChatMessage("assistant", answered), ChatMessage("user", "然后呢")]
        client.chat.completions.create(
            model=server.model_id, messages=rows(follow_up), max_tokens=8
        )
        last = server.backend.results[-1]
        assert last.restored_prompt_tokens > last.prompt_tokens - 30
        assert last.evaluated_prompt_tokens < 30
    engine.close()
