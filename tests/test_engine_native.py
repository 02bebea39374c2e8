"""The native decode loop: the KV record, prompt chunks, sampler chain, seeds and context sizes.

All on real tiny models through llama.cpp; no conversation here comes from ../shared.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from huozi_local.core import huozi
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.kv_session import KvSession
from huozi_local.core.chat.loader import LoadOptions, padded_n_ctx
from huozi_local.core.chat.sampler_chain import PENALTY_LAST_N, SamplerChain, chain_seed
from huozi_local.core.chat.types import (
    ChatMessage,
    ReplyResult,
    SamplingOptions,
    TextDelta,
    collect_reply,
)
from huozi_local.testing.rpc_worker import RpcWorker, in_child
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

# A conversation of our own (Chinese and English, short and long turns).
QUESTIONS = (
    "你好！请介绍一下哈尔滨工业大学。",
    "它的计算机学科有哪些特色？",
    "Please answer in English: what is a mixture of experts?",
    "把上面的回答翻译成中文，并列出三个要点。",
    "最后，用一句话总结我们的对话。",
)

# Flat sampling over a random model: every reply is a draw from thousands of tokens.
RANDOM = SamplingOptions(
    temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=24
)


@pytest.fixture(scope="module")
def chat_engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    eng = LlamaEngine.load(tiny_models.get("merged", "q4_0", "chat"), LoadOptions(n_ctx=2048))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def random_engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    eng = LlamaEngine.load(tiny_models.get("merged", "q4_0", "none"), LoadOptions(n_ctx=512))
    yield eng
    eng.close()


def reply_text(engine: LlamaEngine, messages: list[ChatMessage], options: SamplingOptions) -> str:
    engine.clear_cache()  # every draw starts from the same evaluated prompt
    return collect_reply(engine.stream_reply(messages, options)).text


# -- the KV record ---------------------------------------------------------------------------
def test_the_cache_holds_the_prompt_and_the_exact_reply_ids(chat_engine: LlamaEngine) -> None:
    assert chat_engine._session._guard is None  # no RPC: llama_decode is called directly
    chat_engine.clear_cache()  # whatever the module's other tests left in the shared engine
    history: list[ChatMessage] = []
    previous: list[int] = []
    for question in QUESTIONS:
        history.append(ChatMessage("user", question))
        prompt = chat_engine.prompt_tokens(history)
        assert prompt[: len(previous)] == previous  # the last reply's ids came back verbatim
        result = collect_reply(chat_engine.stream_reply(history))
        assert (result.text, result.stop_reason) == (RIG_TEXT, "stop")
        cached = chat_engine.cached_tokens
        # the prompt, then every generated token; the stop token was sampled, never evaluated
        assert cached[: len(prompt)] == prompt and len(cached) == len(prompt) + 9
        if previous:
            assert result.evaluated_prompt_tokens == len(prompt) - len(previous)
            assert prompt[len(previous)] == huozi.END_OF_UTTERANCE_ID
        else:
            assert result.evaluated_prompt_tokens == len(prompt)
        history.append(ChatMessage("assistant", result.text))
        previous = cached


def _cached_when_the_caller_has_each_token(
    engine: LlamaEngine, question: list[ChatMessage], options: SamplingOptions | None = None
) -> list[int]:
    """How many reply tokens the KV cache held at each TextDelta the caller received."""
    prompt = engine.prompt_tokens(question)
    engine.clear_cache()
    seen: list[int] = []
    for event in engine.stream_reply(question, options):
        if isinstance(event, TextDelta):
            seen.append(len(engine.cached_tokens) - len(prompt))
    return seen


def test_on_the_cpu_the_caller_gets_each_token_before_its_decode(
    chat_engine: LlamaEngine,
) -> None:
    """Where llama_decode computes before returning (the CPU), a caller in another thread (the
    app, the server) works while this one waits in it without the GIL, so the token goes out
    first. The timings are given as such a device gives them, not measured here: on a busy
    machine a measured order could go either way (the RPC test below measures a real one)."""
    session = chat_engine._session
    question = [ChatMessage("user", QUESTIONS[2])]
    for _ in range(50):
        session.note_waits(push_s=1.0, sample_s=0.0)  # decode is the long wait
    assert not session.decode_returns_early
    # 你 好 ， then 龘 (three byte tokens: shown once whole), 世 界 ！
    assert _cached_when_the_caller_has_each_token(chat_engine, question) == [0, 1, 2, 5, 6, 7, 8]


def test_where_decode_returns_early_the_next_one_is_queued_before_the_caller_sees_a_token(
    chat_engine: LlamaEngine,
) -> None:
    """On a GPU or an RPC worker llama_decode only queues the work (see the RPC test below):
    then the device computes the next token while the caller handles this one."""
    session = chat_engine._session
    question = [ChatMessage("user", QUESTIONS[3])]
    try:
        for _ in range(50):  # timings as an async device gives them: queuing is instant
            session.note_waits(push_s=0.0, sample_s=1.0)
        assert session.decode_returns_early
        seen = _cached_when_the_caller_has_each_token(chat_engine, question)
        assert seen == [1, 2, 3, 6, 7, 8, 9]
        for _ in range(50):
            session.note_waits(push_s=0.0, sample_s=1.0)
        two = SamplingOptions(max_tokens=2)
        assert _cached_when_the_caller_has_each_token(chat_engine, question, two) == [1, 1]
        # the budget's last token was not pushed: nothing was evaluated that nobody will read
        assert len(chat_engine.cached_tokens) == len(chat_engine.prompt_tokens(question)) + 1
    finally:
        for _ in range(50):
            session.note_waits(push_s=0.001, sample_s=0.0)


def test_an_rpc_worker_is_measured_as_a_device_whose_decode_returns_early(
    tiny_models: TinyModels,
) -> None:
    """A real ggml device that computes on its own: a worker on 127.0.0.1, every layer on it.

    The f32 model: its compute (~4 ms a token on one worker thread) is well above what queuing
    it costs (a few loopback round trips, ~0.6 ms); with q4_0 the two can come close.
    """
    model = tiny_models.get("merged", "f32", "loop")
    with RpcWorker() as worker:
        found = in_child(
            """
            import json
            from huozi_local.core.chat.engine import LlamaEngine
            from huozi_local.core.chat.loader import LoadOptions
            from huozi_local.core.chat.types import ChatMessage, SamplingOptions, collect_reply
            options = LoadOptions(n_ctx=512, n_gpu_layers=99, rpc_servers=(endpoint,))
            engine = LlamaEngine.load(model, options)
            result = collect_reply(engine.stream_reply(
                [ChatMessage("user", "你好")], SamplingOptions(max_tokens=48)))
            session = engine._session
            print(json.dumps([result.completion_tokens, session.decode_returns_early,
                              session._push_s, session._sample_s]))
            """,
            model=str(model),
            endpoint=str(worker.endpoint),
        )
    assert found[:2] == [48, True], f"push {found[2] * 1e3:.2f} ms, sample {found[3] * 1e3:.2f} ms"


def test_an_edited_earlier_message_reevaluates_from_the_edit(chat_engine: LlamaEngine) -> None:
    first = [ChatMessage("user", QUESTIONS[0])]
    collect_reply(chat_engine.stream_reply(first))
    edited = [ChatMessage("user", QUESTIONS[0] + "还有深圳校区。")]
    prompt = chat_engine.prompt_tokens(edited)
    old = chat_engine.prompt_tokens(first)
    shared = next(i for i, (a, b) in enumerate(zip(prompt, old, strict=False)) if a != b)
    result = collect_reply(chat_engine.stream_reply(edited))
    assert result.evaluated_prompt_tokens == len(prompt) - shared
    assert chat_engine.cached_tokens[: len(prompt)] == prompt


class CancelAfter(threading.Event):
    """An event that reports itself set from its `checks`-th look on."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.looks = 0
        self._checks = checks

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self._checks


def test_a_long_prompt_is_evaluated_in_batches_and_cancels_between_them(
    tiny_models: TinyModels,
) -> None:
    engine = LlamaEngine.load(tiny_models.get("merged", "q4_0", "chat"), LoadOptions(n_ctx=2048))
    session = KvSession(engine.llama.ctx)  # a second view of the context; the engine sits idle
    try:
        assert session.n_batch == 512 and session.n_ctx == 2048
        tokens = engine.llama.tokenize(("请详细解释" * 300).encode(), add_bos=True, special=False)
        assert len(tokens) > 2 * session.n_batch
        cancel = CancelAfter(2)
        assert session.evaluate(tokens, cancel) is False
        assert session.cached_tokens() == tokens[: session.n_batch]  # one batch, then it stopped
        # the next evaluation keeps that batch and adds the rest
        assert session.keep_prefix_of(tokens) == session.n_batch
        assert session.evaluate(tokens[session.n_batch :]) is True
        assert session.cached_tokens() == tokens
    finally:
        session.close()
        engine.close()


def test_a_cancelled_prompt_keeps_what_it_evaluated(chat_engine: LlamaEngine) -> None:
    long_question = [ChatMessage("user", "请详细解释" * 200)]
    prompt = chat_engine.prompt_tokens(long_question)
    chat_engine.clear_cache()
    cancelled = collect_reply(chat_engine.stream_reply(long_question, None, CancelAfter(2)))
    assert (cancelled.stop_reason, cancelled.completion_tokens) == ("cancelled", 0)
    assert chat_engine.cached_tokens == prompt[:512]
    again = collect_reply(chat_engine.stream_reply(long_question))
    assert again.evaluated_prompt_tokens == len(prompt) - 512 and again.text == RIG_TEXT


# -- stops -----------------------------------------------------------------------------------
def test_stop_texts_and_stop_ids_end_the_reply_without_showing_the_stop(
    chat_engine: LlamaEngine,
) -> None:
    question = [ChatMessage("user", QUESTIONS[1])]
    by_text = collect_reply(chat_engine.stream_reply(question, SamplingOptions(stop=("龘世",))))
    assert (by_text.text, by_text.stop_reason) == ("你好，", "stop")
    comma = chat_engine.llama.tokenize("，".encode(), add_bos=False, special=False)[-1]
    events = list(chat_engine.stream_reply(question, SamplingOptions(stop_token_ids=(comma,))))
    result = events[-1]
    assert isinstance(result, ReplyResult)
    assert (result.text, result.stop_reason, result.completion_tokens) == ("你好", "stop", 2)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "你好"


# -- sampling and seeds ----------------------------------------------------------------------
def test_a_seeded_request_repeats_and_does_not_fix_later_unseeded_ones(
    random_engine: LlamaEngine,
) -> None:
    question = [ChatMessage("user", QUESTIONS[2])]
    seeded = SamplingOptions(**{**RANDOM.__dict__, "seed": 42})
    first = reply_text(random_engine, question, seeded)
    assert reply_text(random_engine, question, seeded) == first
    later = [reply_text(random_engine, question, RANDOM) for _ in range(2)]
    assert len({first, *later}) == 3  # each unseeded reply is a fresh draw
    other_seed = SamplingOptions(**{**RANDOM.__dict__, "seed": 43})
    assert reply_text(random_engine, question, other_seed) != first


def test_a_reused_chain_starts_each_reply_as_new(random_engine: LlamaEngine) -> None:
    """The engine keeps the last chain and resets it: the penalty forgets, dist re-seeds."""
    question = [ChatMessage("user", QUESTIONS[0])]
    penalized = SamplingOptions(
        temperature=1.0, top_k=40, top_p=1.0, min_p=0.0, repeat_penalty=1.5, seed=9, max_tokens=32
    )
    first = reply_text(random_engine, question, penalized)
    chain = random_engine._chains._chain
    assert reply_text(random_engine, question, penalized) == first
    assert random_engine._chains._chain is chain  # the same chain, reset
    prompt = random_engine.prompt_tokens(question)
    drawn = random_engine.cached_tokens[len(prompt) :]
    assert len(drawn) >= 8
    random_engine.clear_cache()
    session = random_engine._session
    session.evaluate(prompt)
    again: list[int] = []
    with SamplerChain(penalized, 9, random_engine.llama.n_vocab()) as fresh:
        for _ in drawn:  # a chain built new draws what the reset one drew
            again.append(fresh.sample(session.context))
            session.push(again[-1])
    random_engine.clear_cache()
    assert again == drawn


def test_the_engine_seed_is_the_default_and_a_request_seed_wins(tiny_models: TinyModels) -> None:
    engine = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", "none"), LoadOptions(n_ctx=512, seed=7)
    )
    try:
        question = [ChatMessage("user", QUESTIONS[3])]
        default = reply_text(engine, question, RANDOM)
        assert reply_text(engine, question, RANDOM) == default
        own = SamplingOptions(**{**RANDOM.__dict__, "seed": 8})
        assert reply_text(engine, question, own) != default
        assert reply_text(engine, question, RANDOM) == default  # request 8 did not stick
    finally:
        engine.close()


@pytest.fixture(scope="module")
def loop_engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    eng = LlamaEngine.load(tiny_models.get("merged", "q4_0", "loop"), LoadOptions(n_ctx=512))
    yield eng
    eng.close()


@pytest.mark.parametrize(
    ("rig", "temp", "penalty"),
    [("none", 0.9, 1.0), ("none", 0.9, 1.8), ("loop", 0.9, 50.0), ("loop", 0.0, 50.0)],
)
def test_the_sampler_chain_draws_what_llama_cpp_python_draws(
    random_engine: LlamaEngine, loop_engine: LlamaEngine, rig: str, temp: float, penalty: float
) -> None:
    """Same seed, same settings: token for token what `Llama.generate` samples, penalty included.

    The chain moves the repeat penalty behind a wider top-k (see sampler_chain); this shows the
    move changes nothing. On the loop rig a penalty of 50 breaks the loop, so there it decides.
    """
    engine = random_engine if rig == "none" else loop_engine
    llm = engine.llama
    question = [ChatMessage("user", QUESTIONS[4])]
    prompt = engine.prompt_tokens(question)
    options = SamplingOptions(
        temperature=temp, top_k=40, top_p=0.95, min_p=0.02, repeat_penalty=penalty, seed=5
    )
    options = SamplingOptions(**{**options.__dict__, "max_tokens": 48})
    llm.set_seed(5)
    llm.reset()
    expected: list[int] = []
    for token in llm.generate(
        prompt, top_k=40, top_p=0.95, min_p=0.02, temp=temp, repeat_penalty=penalty
    ):
        expected.append(token)
        if len(expected) == 48:
            break
    engine.clear_cache()  # Llama.generate rewrote the cache behind the engine's back
    result = collect_reply(engine.stream_reply(question, options))
    cached = engine.cached_tokens
    engine.clear_cache()
    assert not set(expected) & engine.stop_token_ids
    assert result.completion_tokens == 48 and result.stop_reason == "length"
    # the cache held every generated token but the last, which was never evaluated
    assert cached[len(prompt) :] == expected[:-1]
    assert result.text == llm.detokenize(expected).decode("utf-8", "replace")
    if (rig, temp) == ("loop", 0.9):
        assert RIG_TEXT * 2 not in result.text  # the penalty broke the loop


def test_the_chain_penalizes_behind_a_wider_top_k_only_when_that_is_exact(
    random_engine: LlamaEngine,
) -> None:
    n_vocab = random_engine.llama.n_vocab()

    def names(**kw: Any) -> list[str]:
        with SamplerChain(SamplingOptions(**kw), None, n_vocab) as chain:
            return chain.names

    assert names() == ["top_k", "penalties", "top_k", "top_p", "min_p", "temp", "dist"]
    assert names(repeat_penalty=1.0) == ["top_k", "top_p", "min_p", "temp", "dist"]
    assert names(temperature=0.0) == ["top_k", "penalties", "greedy"]
    # a penalty below 1 raises logits, and top_k 0 means the whole vocabulary: no shortcut
    assert names(repeat_penalty=0.9) == ["penalties", "top_k", "top_p", "min_p", "temp", "dist"]
    assert names(top_k=0) == ["penalties", "top_p", "min_p", "temp", "dist"]
    assert PENALTY_LAST_N == 64
    assert (chain_seed(None), chain_seed(-1), chain_seed(5), chain_seed(2**32 + 5)) == (
        0xFFFFFFFF,
        0xFFFFFFFF,
        5,
        5,
    )


# -- context sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize(("requested", "real"), [(64, 256), (1000, 1024)])
def test_any_context_size_works_at_the_size_llama_cpp_really_has(
    tiny_models: TinyModels, requested: int, real: int
) -> None:
    assert padded_n_ctx(requested) == real
    engine = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", "loop"), LoadOptions(n_ctx=requested)
    )
    try:
        assert engine.n_ctx == real
        question = [ChatMessage("user", QUESTIONS[0])]
        result = collect_reply(engine.stream_reply(question, SamplingOptions(max_tokens=real)))
        # past the requested size (the old crash), up to the last position of the real one
        assert result.stop_reason == "length"
        assert result.prompt_tokens + result.completion_tokens == real
        assert len(engine.cached_tokens) == real - 1
        raw = collect_reply(engine.stream_completion("再来", SamplingOptions(max_tokens=real)))
        assert raw.prompt_tokens + raw.completion_tokens == real
    finally:
        engine.close()


def test_ask_with_small_and_odd_context_sizes(tiny_models: TinyModels, huozi_home: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    model = tiny_models.get("merged", "q4_0", "chat")
    for ctx in ("64", "1000"):
        command = ["ask", "你好", "--json", "--ctx", ctx, "--model", str(model)]
        done = subprocess.run(
            [sys.executable, "-m", "huozi_local", *command],
            capture_output=True,
            text=True,
            env={**os.environ, "HUOZI_HOME": str(huozi_home)},
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["text"] == RIG_TEXT


# -- RPC workers -----------------------------------------------------------------------------
def test_with_rpc_devices_every_decode_runs_under_the_loader_guard(
    tiny_models: TinyModels,
) -> None:
    """A lost RPC worker must become WorkerLost: the loop decodes and samples via `guard`.

    The model runs on this CPU (a worker that is stopped stays registered with ggml for the
    rest of the process, which would break the RPC tests after this one); `guard` is set to
    the model's own `run_guarded`, as the loader sets it for a model with RPC devices.
    """
    from huozi_local.core.chat.loader import check_model_file, load_llama

    path = tiny_models.get("merged", "q4_0", "chat")
    llm = load_llama(path, LoadOptions(n_ctx=512))
    assert llm.guard is None  # no RPC device: calls go direct
    calls: list[int] = []

    def counting_guard(call: Any, *args: Any) -> Any:
        calls.append(1)
        return llm.run_guarded(call, *args)

    llm.guard = counting_guard
    engine = LlamaEngine(llm, path, check_model_file(path))
    try:
        result = collect_reply(engine.stream_reply([ChatMessage("user", "你好")]))
        assert (result.text, result.stop_reason) == (RIG_TEXT, "stop")
        # the prompt (one batch), 9 tokens evaluated, 10 samples (the last one the stop token)
        assert len(calls) == 1 + 9 + 10
    finally:
        engine.close()


# -- threads -----------------------------------------------------------------------------------
def test_the_context_computes_on_attached_threadpools_that_follow_thread_changes(
    chat_engine: LlamaEngine,
) -> None:
    """As llama.cpp's own tools do: pools made once, not one per graph; resized, never smaller."""
    import llama_cpp

    pools = chat_engine.threadpools
    assert pools is not None and pools._pools  # this build's CPU backend exposes the API
    ctx = chat_engine.llama.ctx
    question = [ChatMessage("user", QUESTIONS[0])]
    for n_threads, n_batch in ((1, 2), (2, 1), (2, 2)):
        chat_engine.set_threads(n_threads, n_batch)
        assert (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)) == (
            n_threads,
            n_batch,
        )
        assert len(pools._pools) == (1 if n_threads == n_batch else 2)
        chat_engine.clear_cache()  # the prompt is evaluated as a batch, then tokens one by one
        assert collect_reply(chat_engine.stream_reply(question)).text == RIG_TEXT
