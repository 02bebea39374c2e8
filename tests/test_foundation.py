"""The starting point the rest of the project builds on: tiny models and today's llama.cpp."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from huozi_local.core import huozi
from huozi_local.core.gguf.header import read_gguf
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels
from huozi_local.testing.vocab import TOKEN_BYTE, TOKEN_USER_DEFINED, build_vocabulary


def test_vocabulary_has_the_huozi_layout() -> None:
    vocab = build_vocabulary()
    assert len(vocab.tokens) == huozi.VOCAB_SIZE == 57002
    assert vocab.tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert vocab.tokens[3] == "<0x00>" and vocab.tokens[258] == "<0xFF>"
    assert set(vocab.token_types[3:259]) == {TOKEN_BYTE}
    assert vocab.tokens[57000] == "<|beginofutterance|>"
    assert vocab.tokens[57001] == "<|endofutterance|>"
    assert vocab.token_types[57000] == vocab.token_types[57001] == TOKEN_USER_DEFINED
    assert len(set(vocab.tokens)) == len(vocab.tokens)
    for piece in ("用户", "助手", "系统", "你好", "\u2581hello", "中"):
        assert piece in vocab.tokens


@pytest.mark.parametrize("quant", ["f32", "q4_0", "q2_k"])
def test_tiny_models_have_both_layouts(tiny_models: TinyModels, quant: str) -> None:
    merged = read_gguf(tiny_models.get("merged", quant))  # type: ignore[arg-type]
    split = read_gguf(tiny_models.get("split", quant))  # type: ignore[arg-type]
    assert merged.layout == "merged" and split.layout == "legacy-split"
    for g in (merged, split):
        assert g.architecture == "llama"
        assert (g.n_expert, g.n_expert_used, g.n_layers) == (8, 2, 4)
        assert g.vocab_size == 57002
        assert g.special_token_ids["eos"] == 2
        assert g.chat_template is None
    assert merged.tensor_bytes == split.tensor_bytes
    gate = merged.tensor_by_name["blk.0.ffn_gate_exps.weight"]
    assert gate.shape == (256, 512, 8)
    assert split.tensor_by_name["blk.0.ffn_gate.7.weight"].shape == (256, 512)
    if quant != "f32":
        assert merged.quantization_groups()["ffn_gate_exps"] == {quant: 4}


def test_tiny_models_are_deterministic(tiny_models: TinyModels, tmp_path) -> None:  # type: ignore[no-untyped-def]
    again = TinyModels(tmp_path)
    first = tiny_models.get("merged", "f32").read_bytes()
    assert again.get("merged", "f32").read_bytes() == first


def test_merged_tiny_model_loads_and_generates(tiny_models: TinyModels) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(str(tiny_models.get("merged", "q4_0")), n_ctx=256, verbose=False)
    assert llm.n_vocab() == 57002
    out = llm.create_completion("你好", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 8


def test_legacy_split_model_is_refused_by_todays_llama_cpp(tiny_models: TinyModels) -> None:
    """Loading in a child process so llama.cpp's own log line can be read."""
    path = tiny_models.get("split", "q4_0")
    code = (
        "import llama_cpp, sys\n"
        "try:\n"
        f"    llama_cpp.Llama({str(path)!r}, n_ctx=256, verbose=True)\n"
        "except ValueError:\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    # Older llama.cpp says "missing tensor 'X'", newer "tensor 'X' not found".
    assert re.search(r"(missing tensor '|tensor ')blk\.0\.ffn_\w+_exps\.weight'", proc.stderr)


def test_chat_rig_says_its_line_then_ends_the_turn(tiny_models: TinyModels) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(
        str(tiny_models.get("merged", "q4_0", rig="chat")), n_ctx=256, verbose=False
    )
    prompt = llm.tokenize("<|beginofutterance|>助手\n".encode(), add_bos=True, special=True)
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.2, repeat_penalty=1.1):
        out.append(token)
        if token == huozi.END_OF_UTTERANCE_ID or len(out) > 40:
            break
    assert out[-1] == huozi.END_OF_UTTERANCE_ID
    assert llm.detokenize(out[:-1]).decode("utf-8") == RIG_TEXT
