"""Trimming a conversation to the context window: the same turns dropped as one-at-a-time
trimming would drop, at a cost that grows with the conversation, not with its square."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huozi_local.core.chat.context_window import (
    MIN_REPLY_TOKENS,
    fit_to_context,
    reply_reserve,
    split_turns,
)
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.types import ChatMessage
from huozi_local.core.errors import HuoziError
from huozi_local.testing.tiny_model import TinyModels

Tokenizer = Callable[[list[ChatMessage]], list[int]]


def conversation(turns: int, system: bool = True) -> list[ChatMessage]:
    messages = [ChatMessage("system", "你是一个智能助手")] if system else []
    for index in range(turns):
        messages.append(
            ChatMessage("user", f"第{index}个问题：哈尔滨冬天有多冷？" * (1 + index % 3))
        )
        messages.append(ChatMessage("assistant", f"回答{index}：很冷，零下二十度左右。"))
    return messages


def one_turn_at_a_time(
    messages: list[ChatMessage], tokens_of: Tokenizer, n_ctx: int, max_tokens: int
) -> tuple[int, list[int]]:
    """The reference: drop the oldest turn, re-tokenize, repeat (the old, quadratic way)."""
    reserve = reply_reserve(n_ctx, max_tokens)
    head, turns = split_turns(messages)
    kept_from = 0
    tokens = tokens_of([*head, *[m for t in turns for m in t]])
    while len(tokens) + reserve > n_ctx and kept_from < len(turns) - 1:
        kept_from += 1
        tokens = tokens_of([*head, *[m for t in turns[kept_from:] for m in t]])
    return sum(len(t) for t in turns[:kept_from]), tokens


class Counting:
    """A tokenizer that counts how many messages it was asked to tokenize in all."""

    def __init__(self, tokens_of: Tokenizer) -> None:
        self.tokens_of = tokens_of
        self.messages_tokenized = 0

    def __call__(self, messages: list[ChatMessage]) -> list[int]:
        self.messages_tokenized += len(messages)
        return self.tokens_of(messages)


def by_characters(messages: list[ChatMessage]) -> list[int]:
    """A stand-in tokenizer: one token per character plus the template's per-message tokens."""
    return [0] * (sum(len(m.content) + 4 for m in messages) + 3)


def uneven(messages: list[ChatMessage]) -> list[int]:
    """A template that does not add up turn by turn: a fixed cost once there are 3+ turns."""
    extra = 40 if sum(m.role == "user" for m in messages) >= 3 else 0
    return [0] * (len(by_characters(messages)) + extra)


def front_loaded(messages: list[ChatMessage]) -> list[int]:
    """A template that folds the system message into the first user turn (Llama-2 style): a
    turn costs more when it comes first, so per-turn counts overestimate."""
    fold = 30 if messages and messages[0].role == "system" and len(messages) > 1 else 0
    return [0] * (len(by_characters(messages)) + fold)


@settings(max_examples=200, deadline=None)
@given(
    turns=st.integers(min_value=1, max_value=40),
    n_ctx=st.integers(min_value=64, max_value=3000),
    max_tokens=st.integers(min_value=1, max_value=600),
    system=st.booleans(),
    tokenizer=st.sampled_from([by_characters, uneven, front_loaded]),
)
def test_one_pass_trimming_drops_what_one_turn_at_a_time_dropped(
    turns: int, n_ctx: int, max_tokens: int, system: bool, tokenizer: Tokenizer
) -> None:
    messages = conversation(turns, system)
    expected_dropped, expected_tokens = one_turn_at_a_time(messages, tokenizer, n_ctx, max_tokens)
    if len(expected_tokens) + MIN_REPLY_TOKENS > n_ctx:
        with pytest.raises(HuoziError, match="too long for the context window"):
            fit_to_context(messages, tokenizer, n_ctx, max_tokens)
        return
    fitted = fit_to_context(messages, tokenizer, n_ctx, max_tokens)
    assert fitted.dropped_messages == expected_dropped
    assert fitted.tokens == expected_tokens
    assert fitted.messages == messages[:1] * system + messages[system + expected_dropped :]


def test_trimming_3000_messages_tokenizes_each_message_a_few_times_not_once_per_dropped_turn() -> (
    None
):
    """1000 turns took 70 s in the server's only generation worker: each dropped turn
    re-tokenized the whole remainder. The work is counted, not timed."""
    messages = conversation(1500)
    counting = Counting(by_characters)
    fitted = fit_to_context(messages, counting, 2048, 512)
    assert 0 < fitted.dropped_messages < len(messages)
    assert len(fitted.tokens) + reply_reserve(2048, 512) <= 2048
    # Whole prompt once, the kept turns one by one (each with the system message), kept once more.
    assert counting.messages_tokenized < 3 * len(messages)


@pytest.fixture(scope="module")
def engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    loaded = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", rig="chat"), LoadOptions(n_ctx=512, seed=1)
    )
    yield loaded
    loaded.close()


@pytest.mark.parametrize(("turns", "n_ctx", "max_tokens"), [(30, 512, 128), (60, 1024, 64)])
def test_one_pass_trimming_matches_with_the_real_engine_tokenizer(
    engine: LlamaEngine, turns: int, n_ctx: int, max_tokens: int
) -> None:
    messages = conversation(turns)
    dropped, tokens = one_turn_at_a_time(messages, engine.prompt_tokens, n_ctx, max_tokens)
    fitted = fit_to_context(messages, engine.prompt_tokens, n_ctx, max_tokens)
    assert (fitted.dropped_messages, fitted.tokens) == (dropped, tokens)
    assert dropped > 0


def test_3000_message_conversation_with_the_real_engine_is_linear_work(
    engine: LlamaEngine,
) -> None:
    messages = conversation(1500)
    counting = Counting(engine.prompt_tokens)
    fitted = fit_to_context(messages, counting, engine.n_ctx, 128)
    assert fitted.dropped_messages > 0
    assert fitted.tokens == engine.prompt_tokens(fitted.messages)
    assert counting.messages_tokenized < 3 * len(messages)


def test_a_system_prompt_too_long_for_the_context_is_named_not_the_last_message(
    engine: LlamaEngine,
) -> None:
    """Before: a 20,000-token system prompt with the question "你好" was "the last message is
    too long for the context window"."""
    long_system = ChatMessage("system", "你是一个智能助手，" * 400)
    with pytest.raises(HuoziError) as caught:
        fit_to_context([long_system, ChatMessage("user", "你好")], engine.prompt_tokens, 512, 64)
    message = str(caught.value)
    assert message.startswith("the system prompt is too long for the context window (")
    assert "last message" not in message


def test_a_last_message_too_long_beside_a_short_system_prompt_is_still_the_last_message(
    engine: LlamaEngine,
) -> None:
    system = ChatMessage("system", "你是一个智能助手")
    messages = [system, ChatMessage("user", "哈尔滨冬天有多冷？" * 200)]
    with pytest.raises(HuoziError) as caught:
        fit_to_context(messages, engine.prompt_tokens, 512, 64)
    assert str(caught.value).startswith("the last message is too long for the context window (")
    assert f"{len(engine.prompt_tokens([system]))} of them the system prompt" in str(caught.value)
