"""How a huozi reply ends: at `<|endofutterance|>` (57001), whatever the file says about it.

The official files type 57001 USER_DEFINED and name `</s>` (2) as the end of generation, so
llama.cpp alone never stops at it; huozi-local adds 57001 to the stop ids itself. Its text stop
("<|endofutterance|>" in the reply) is only a net under that: it cannot see a 57001 that a
conversion typed CONTROL, because a control token has no text in a reply. The rigged models
answer RIG_TEXT (nine tokens) and then 57001; without the stop they would start over.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from huozi_local.core import huozi
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.types import ChatMessage, SamplingOptions, collect_reply
from huozi_local.core.gguf.header import read_gguf
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels
from huozi_local.testing.vocab import TOKEN_CONTROL

RIG_TOKENS = 9  # 你 好 ， 龘 (three byte tokens) 世 界 ！
BUDGET = SamplingOptions(max_tokens=40)


def _with_utterance_tokens_typed_control(src: Path, dst: Path) -> Path:
    """A third-party conversion: the utterance tokens CONTROL (as Hugging Face's tokenizer marks
    added special tokens), `</s>` still the end of generation, no end-of-turn id."""
    from gguf import GGUFReader

    shutil.copyfile(src, dst)
    reader = GGUFReader(dst, "r+")
    types = reader.fields["tokenizer.ggml.token_type"]
    for token_id in (huozi.BEGIN_OF_UTTERANCE_ID, huozi.END_OF_UTTERANCE_ID):
        types.parts[types.data[token_id]][0] = TOKEN_CONTROL
    reader.data.flush()
    del reader
    return dst


def _reply(model: Path) -> tuple[str, str, int, list[int]]:
    engine = LlamaEngine.load(model, LoadOptions(n_ctx=256))
    try:
        question = [ChatMessage("user", "你好")]
        prompt = engine.prompt_tokens(question)
        result = collect_reply(engine.stream_reply(question, BUDGET))
        reply_ids = engine.cached_tokens[len(prompt) :]
        return result.text, result.stop_reason, result.completion_tokens, reply_ids
    finally:
        engine.close()


def test_the_official_file_stops_at_57001_by_its_id(tiny_models: TinyModels) -> None:
    """Stopped by id, 57001 is sampled but never counted, shown or evaluated into the cache."""
    model = tiny_models.get("merged", "q4_0", "chat")
    assert read_gguf(model).special_token_ids["eos"] == huozi.EOS_ID
    text, reason, count, reply_ids = _reply(model)
    assert (text, reason, count) == (RIG_TEXT, "stop", RIG_TOKENS)
    assert huozi.END_OF_UTTERANCE_ID not in reply_ids


def test_a_conversion_that_typed_57001_control_still_stops_there(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    model = _with_utterance_tokens_typed_control(
        tiny_models.get("merged", "q4_0", "chat"), tmp_path / "converted.gguf"
    )
    gguf = read_gguf(model)
    assert gguf.is_huozi and gguf.token_types[huozi.END_OF_UTTERANCE_ID] == TOKEN_CONTROL
    assert gguf.special_token_ids["eos"] == huozi.EOS_ID
    text, reason, count, _ = _reply(model)
    assert (text, reason, count) == (RIG_TEXT, "stop", RIG_TOKENS)


def test_a_repaired_file_stops_at_57001_as_its_end_of_generation(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    from huozi_local.core.gguf.repair import repair_gguf

    repaired = repair_gguf(tiny_models.get("split", "q4_0", "chat"), tmp_path / "r.gguf").output
    assert repaired is not None
    assert read_gguf(repaired).special_token_ids["eos"] == huozi.END_OF_UTTERANCE_ID
    text, reason, count, _ = _reply(repaired)
    assert (text, reason, count) == (RIG_TEXT, "stop", RIG_TOKENS)
