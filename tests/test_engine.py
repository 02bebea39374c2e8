"""The engine on real tiny models: stop, cancel, length, overflow, streaming, KV reuse, loading."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from huozi_local.commands._remedies import cli_wording
from huozi_local.core import huozi
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.types import (
    ChatMessage,
    ContextTrimmed,
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
    TextDelta,
    collect_reply,
)
from huozi_local.core.errors import Cancelled, GGUFError, HuoziError, LegacyLayout
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.progress import Progress
from huozi_local.testing.conversations import Conversation
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels, copy_fields
from huozi_local.tui.remedies import app_wording

U: Literal["user"] = "user"
A: Literal["assistant"] = "assistant"


def run(engine: LlamaEngine, messages: list[ChatMessage], **kw: Any) -> list[ReplyEvent]:
    cancel = kw.pop("cancel", None)
    return list(engine.stream_reply(messages, SamplingOptions(**kw), cancel))


@pytest.fixture(scope="module")
def chat_engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    eng = LlamaEngine.load(tiny_models.get("merged", "f32", "chat"), LoadOptions(n_ctx=2048))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def loop_engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    eng = LlamaEngine.load(tiny_models.get("merged", "q4_0", "loop"), LoadOptions(n_ctx=256))
    yield eng
    eng.close()


def write_variant(
    src: Path, dst: Path, fields: dict[str, Any], token_edits: dict[int, tuple[str, int]]
) -> Path:
    """A copy of a tiny model with changed metadata and token strings/types (gguf-py)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", *fields}
    copy_fields(reader, writer, skip=frozenset(skip))
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    for token_id, (text, token_type) in token_edits.items():
        tokens[token_id], types[token_id] = text, token_type
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for key, value in fields.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, value)
    for tensor in reader.tensors:
        raw = np.asarray(tensor.data)
        writer.add_tensor(
            tensor.name,
            raw,
            raw_shape=list(raw.shape),
            raw_dtype=gguf.GGMLQuantizationType(int(tensor.tensor_type)),
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# -- stop, streaming ------------------------------------------------------------------------
def test_stops_at_end_of_utterance_with_the_exact_text(chat_engine: LlamaEngine) -> None:
    events = run(chat_engine, [ChatMessage(U, "你好")])
    result = events[-1]
    assert isinstance(result, ReplyResult)
    assert result.text == RIG_TEXT == "你好，龘世界！"
    assert result.stop_reason == "stop"
    assert result.completion_tokens == 9  # 龘 is three byte tokens; 57001 is not counted
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == result.text
    assert chat_engine.stop_token_ids >= {huozi.END_OF_UTTERANCE_ID, huozi.EOS_ID}


def test_chinese_streams_in_whole_characters(
    chat_engine: LlamaEngine, conversations: tuple[Conversation, ...]
) -> None:
    question = conversations[0].turns[0]
    deltas = [
        e.text for e in run(chat_engine, [ChatMessage(U, question)]) if isinstance(e, TextDelta)
    ]
    assert deltas and "龘" in deltas
    assert "".join(deltas) == RIG_TEXT
    for delta in deltas:  # no replacement character, no lone surrogate from a split byte
        assert "\ufffd" not in delta
        assert not any("\ud800" <= ch <= "\udfff" for ch in delta)


def test_length_stop(chat_engine: LlamaEngine) -> None:
    result = collect_reply(
        chat_engine.stream_reply([ChatMessage(U, "hi")], SamplingOptions(max_tokens=4))
    )
    assert result.stop_reason == "length"
    assert result.completion_tokens == 4
    # the 4th token is the first of 龘's three bytes: only the final flush may mark it broken
    assert result.text == "你好，\ufffd"
    whole = collect_reply(
        chat_engine.stream_reply([ChatMessage(U, "hi")], SamplingOptions(max_tokens=6))
    )
    assert (whole.text, whole.stop_reason) == ("你好，龘", "length")


def test_cancel_from_another_thread_stops_within_a_token(loop_engine: LlamaEngine) -> None:
    cancel = threading.Event()
    seen: list[str] = []
    result: ReplyResult | None = None
    for event in loop_engine.stream_reply([ChatMessage(U, "go")], SamplingOptions(), cancel):
        if isinstance(event, TextDelta):
            seen.append(event.text)
            if len(seen) == 3:
                setter = threading.Thread(target=cancel.set)
                setter.start()
                setter.join()
        elif isinstance(event, ReplyResult):
            result = event
    assert result is not None and result.stop_reason == "cancelled"
    assert len(seen) == 3
    assert result.text == "".join(seen)


def test_a_set_cancel_event_generates_nothing(loop_engine: LlamaEngine) -> None:
    cancel = threading.Event()
    cancel.set()
    long_question = "请详细解释" * 30
    result = collect_reply(loop_engine.stream_reply([ChatMessage(U, long_question)], None, cancel))
    assert result.stop_reason == "cancelled" and result.completion_tokens == 0


# -- context overflow -----------------------------------------------------------------------
def test_overflow_keeps_the_system_message_and_drops_the_oldest_turns(
    loop_engine: LlamaEngine,
) -> None:
    history: list[ChatMessage] = [ChatMessage("system", "只用中文回答")]
    trimmed: list[ContextTrimmed] = []
    for turn in range(12):
        history.append(ChatMessage(U, f"第{turn}个问题：今天天气怎么样？"))
        events = run(loop_engine, history, max_tokens=20)
        trimmed += [e for e in events if isinstance(e, ContextTrimmed)]
        result = events[-1]
        assert isinstance(result, ReplyResult) and result.stop_reason == "length"
        assert result.prompt_tokens + result.completion_tokens <= loop_engine.n_ctx
        history.append(ChatMessage(A, result.text))
    assert isinstance(result, ReplyResult)
    assert trimmed and trimmed[-1].dropped_messages % 2 == 0  # whole turns
    assert "context" in trimmed[-1].message
    assert result.dropped_messages == trimmed[-1].dropped_messages > 0
    # the last prompt was: the system message, then the newest turns only
    asked = history[:-1]
    kept = [asked[0], *asked[1 + result.dropped_messages :]]
    assert result.prompt_tokens == len(loop_engine.prompt_tokens(kept))
    assert kept[1].role == "user" and kept[0].content == "只用中文回答"


def test_a_last_message_that_cannot_fit_is_one_line_error(loop_engine: LlamaEngine) -> None:
    with pytest.raises(HuoziError, match="too long for the context"):
        run(loop_engine, [ChatMessage(U, "很长的问题" * 300)])


# -- KV-cache reuse --------------------------------------------------------------------------
def test_each_turn_evaluates_only_what_was_added(
    tiny_models: TinyModels, conversations: tuple[Conversation, ...]
) -> None:
    engine = LlamaEngine.load(tiny_models.get("merged", "q4_0", "chat"), LoadOptions(n_ctx=2048))
    history: list[ChatMessage] = []
    previous: ReplyResult | None = None
    try:
        for question in [turn for c in conversations[:3] for turn in c.turns]:
            history.append(ChatMessage(U, question))
            result = collect_reply(engine.stream_reply(history))
            if previous is None:
                assert result.evaluated_prompt_tokens == result.prompt_tokens
            else:
                cached = previous.prompt_tokens + previous.completion_tokens
                assert result.evaluated_prompt_tokens == result.prompt_tokens - cached
                added = engine.prompt_tokens(history)[cached:]
                assert added[0] == huozi.END_OF_UTTERANCE_ID  # the last reply's end, then the turn
            history.append(ChatMessage(A, result.text))
            previous = result
    finally:
        engine.close()


def test_regenerating_the_same_prompt_evaluates_one_token(chat_engine: LlamaEngine) -> None:
    messages = [ChatMessage(U, "再说一遍")]
    collect_reply(chat_engine.stream_reply(messages))
    again = collect_reply(chat_engine.stream_reply(messages))
    assert again.evaluated_prompt_tokens == 1 and again.text == RIG_TEXT


def test_one_reply_at_a_time_across_threads(chat_engine: LlamaEngine) -> None:
    """A reply paused mid-stream holds the engine: another thread's reply produces nothing until
    the first has ended. The log of events, in the order they happened, tells interleaving from
    one reply after the other, whatever the threads' timing."""
    log: list[tuple[str, str]] = []
    first = chat_engine.stream_reply([ChatMessage(U, "问题一")])
    log.append(("first", type(next(first)).__name__))  # the first reply now holds the engine
    second_began = threading.Event()

    def second() -> None:
        for event in chat_engine.stream_reply([ChatMessage(U, "问题二")]):
            second_began.set()
            log.append(("second", type(event).__name__))

    other = threading.Thread(target=second)
    other.start()
    second_began.wait(0.5)  # a chance to interleave; an engine without its lock would take it
    log += [("first", type(event).__name__) for event in first]
    other.join()
    whose = [who for who, _ in log]
    assert whose == sorted(whose)  # every "first" event before any "second" one
    assert ("first", "ReplyResult") in log and log[-1] == ("second", "ReplyResult")


# -- raw completions -------------------------------------------------------------------------
HUOZI_PROMPT = "<|beginofutterance|>用户\n你好<|endofutterance|>\n<|beginofutterance|>助手\n"


@pytest.fixture(scope="module")
def completion_engine(tiny_models: TinyModels) -> Iterator[LlamaEngine]:
    eng = LlamaEngine.load(tiny_models.get("merged", "q4_0", rig="chat"), LoadOptions(n_ctx=512))
    yield eng
    eng.close()


def test_a_raw_huozi_prompt_is_answered_and_stops_at_end_of_utterance(
    completion_engine: LlamaEngine,
) -> None:
    events = list(completion_engine.stream_completion(HUOZI_PROMPT))
    result = events[-1]
    assert isinstance(result, ReplyResult)
    assert (result.text, result.stop_reason, result.completion_tokens) == (RIG_TEXT, "stop", 9)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == RIG_TEXT
    assert all(isinstance(e, TextDelta) for e in events[:-1])


def test_a_raw_prompt_parses_special_tokens_unless_told_not_to(
    completion_engine: LlamaEngine,
) -> None:
    def prompt_tokens(prompt: str, *, parse_special: bool = True, add_bos: bool = True) -> int:
        events = completion_engine.stream_completion(
            prompt, parse_special=parse_special, add_bos=add_bos
        )
        result = collect_reply(events)
        assert result.text == RIG_TEXT
        return result.prompt_tokens

    with_bos = prompt_tokens(HUOZI_PROMPT)
    # <s> (a CONTROL token) is BOS only when parsed; as letters it takes several tokens
    assert prompt_tokens("<s>" + HUOZI_PROMPT, add_bos=False) == with_bos
    assert prompt_tokens("<s>" + HUOZI_PROMPT, add_bos=False, parse_special=False) > with_bos
    assert prompt_tokens(HUOZI_PROMPT, add_bos=False) == with_bos - 1


def test_a_repeated_raw_prompt_reuses_the_kv_cache(completion_engine: LlamaEngine) -> None:
    first = collect_reply(completion_engine.stream_completion(HUOZI_PROMPT + "再来"))
    again = collect_reply(completion_engine.stream_completion(HUOZI_PROMPT + "再来"))
    assert first.evaluated_prompt_tokens > 1
    assert again.evaluated_prompt_tokens == 1 and again.text == first.text


def test_a_raw_completion_stops_at_max_tokens(completion_engine: LlamaEngine) -> None:
    result = collect_reply(
        completion_engine.stream_completion(HUOZI_PROMPT, SamplingOptions(max_tokens=6))
    )
    assert (result.text, result.stop_reason, result.completion_tokens) == ("你好，龘", "length", 6)


def test_a_raw_completion_can_be_cancelled(
    completion_engine: LlamaEngine, loop_engine: LlamaEngine
) -> None:
    cancel = threading.Event()
    cancel.set()
    before = collect_reply(completion_engine.stream_completion("请详细解释" * 30, None, cancel))
    assert (before.stop_reason, before.completion_tokens) == ("cancelled", 0)
    cancel = threading.Event()
    seen: list[str] = []
    result: ReplyResult | None = None
    for event in loop_engine.stream_completion("go", None, cancel):
        if isinstance(event, TextDelta):
            seen.append(event.text)
            if len(seen) == 3:
                cancel.set()
        elif isinstance(event, ReplyResult):
            result = event
    assert result is not None and result.stop_reason == "cancelled"
    assert len(seen) == 3 and result.text == "".join(seen)


def test_raw_prompts_that_cannot_run_are_one_line_errors(loop_engine: LlamaEngine) -> None:
    with pytest.raises(HuoziError, match="context is 256"):
        list(loop_engine.stream_completion("很长的问题" * 300))
    with pytest.raises(HuoziError, match="empty"):
        list(loop_engine.stream_completion("", add_bos=False))


def test_a_chat_reply_after_raw_completions_still_works(completion_engine: LlamaEngine) -> None:
    collect_reply(completion_engine.stream_completion(HUOZI_PROMPT))
    unfinished = completion_engine.stream_completion(HUOZI_PROMPT)
    assert isinstance(unfinished, Generator)  # the server closes it when a client hangs up
    assert isinstance(next(unfinished), TextDelta)
    unfinished.close()  # a client that hung up mid-reply
    results: list[ReplyResult] = []
    other = threading.Thread(
        target=lambda: results.append(
            collect_reply(completion_engine.stream_reply([ChatMessage(U, "你好")]))
        )
    )
    other.start()
    other.join(300)  # a lock left held would block it for good
    assert [(r.text, r.stop_reason) for r in results] == [(RIG_TEXT, "stop")]


# -- other files -----------------------------------------------------------------------------
def test_a_repaired_control_typed_file_behaves_the_same(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    from huozi_local.core.gguf.repair import repair_gguf

    src = tiny_models.get("merged", "q4_0", "chat")
    dst = tmp_path / "repaired.gguf"
    repair_gguf(src, dst)
    assert read_gguf(dst).token_type_name(huozi.END_OF_UTTERANCE_ID) == "control"
    engine = LlamaEngine.load(dst, LoadOptions(n_ctx=512))
    try:
        typed = [ChatMessage(U, "a<|endofutterance|>b<|beginofutterance|>")]
        plain = [ChatMessage(U, "x")]
        ids = engine.prompt_tokens(typed)
        for special in (huozi.BEGIN_OF_UTTERANCE_ID, huozi.END_OF_UTTERANCE_ID):
            assert ids.count(special) == engine.prompt_tokens(plain).count(special)
        result = collect_reply(engine.stream_reply(plain))
        assert (result.text, result.stop_reason) == (RIG_TEXT, "stop")
    finally:
        engine.close()


CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chatml_file(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Not huozi: ChatML tokens (USER_DEFINED start, CONTROL end), its own EOS and template."""
    return write_variant(
        tiny_models.get("merged", "q4_0", "chat"),
        tmp_path_factory.mktemp("chatml") / "chatml.gguf",
        {"tokenizer.chat_template": CHATML, "tokenizer.ggml.eos_token_id": 57001},
        {57000: ("<|im_start|>", 4), 57001: ("<|im_end|>", 3)},
    )


def test_other_models_use_their_embedded_template_and_eog(chatml_file: Path) -> None:
    engine = LlamaEngine.load(chatml_file, LoadOptions(n_ctx=512))
    try:
        assert not engine.is_huozi
        messages = [ChatMessage(U, "你好"), ChatMessage(A, "嗯"), ChatMessage(U, "再见")]
        rendered = (
            "<s><|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n嗯<|im_end|>\n"
            "<|im_start|>user\n再见<|im_end|>\n<|im_start|>assistant\n"
        )
        reference = engine.llama.tokenize(rendered.encode(), add_bos=False, special=True)
        assert engine.prompt_tokens(messages) == reference
        typed = engine.prompt_tokens([ChatMessage(U, "<|im_end|>\n<|im_start|>system")])
        assert typed.count(57000) == 2 and typed.count(57001) == 1
        result = collect_reply(engine.stream_reply([ChatMessage(U, "hi")]))
        assert (result.text, result.stop_reason) == (RIG_TEXT, "stop")
    finally:
        engine.close()


# -- loading ---------------------------------------------------------------------------------
def test_load_reports_progress_and_can_be_cancelled(tiny_models: TinyModels) -> None:
    reports: list[Progress] = []
    engine = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", "none"), LoadOptions(n_ctx=256), progress=reports.append
    )
    engine.close()
    assert reports and reports[-1].done == reports[-1].total
    assert engine.model_name and engine.path.name.endswith(".gguf")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        LlamaEngine.load(
            tiny_models.get("merged", "q4_0", "none"), LoadOptions(n_ctx=256), cancel=cancel
        )


def test_load_errors_are_one_line(tiny_models: TinyModels, tmp_path: Path) -> None:
    with pytest.raises(HuoziError, match="no such model file"):
        LlamaEngine.load(tmp_path / "missing.gguf")
    split = tiny_models.get("split", "q4_0", "none")
    with pytest.raises(LegacyLayout, match="pre-2024 layout") as legacy:
        LlamaEngine.load(split)
    # the core says what is wrong; each front end says how to fix it in its own terms
    assert cli_wording(legacy.value).endswith(f": run `huozi-local repair {split}`")
    assert app_wording(legacy.value).endswith(": import it in setup (Use a file), which repairs it")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_models.get("merged", "q4_0", "none").read_bytes()[:5000])
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    for bad in (truncated, not_gguf):
        with pytest.raises(GGUFError) as info:
            LlamaEngine.load(bad)
        assert "\n" not in str(info.value)
