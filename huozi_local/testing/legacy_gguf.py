"""Huozi-shaped legacy (split-expert) GGUF files of any size, written in seconds.

The tiny models are real but small; inspecting a 27 GB file or timing the repair of a gigabyte
needs the real layout at scale. These files carry the full huozi vocabulary and the legacy
tensor list (8 experts per layer, one tensor each), with data that is either a repeated random
block (real bytes on disk, for benchmarks) or a sparse hole (for header-only tests). They are not
runnable models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from huozi_local.core import huozi
from huozi_local.core.gguf.byte_format import ValueType
from huozi_local.core.gguf.rewrite import OutTensor, Piece, build_header, encode_kv, encode_string
from huozi_local.testing.vocab import build_vocabulary

F32, Q4_0 = 0, 2


def legacy_tensors(n_layers: int, n_embd: int, n_ff: int, n_expert: int = 8) -> list[OutTensor]:
    """The tensor list of a legacy Mixtral GGUF, in its converter's order (q4_0 matrices)."""
    n_vocab, kv = huozi.VOCAB_SIZE, n_embd // 4

    def t(name: str, shape: tuple[int, ...], ggml_type: int = Q4_0) -> OutTensor:
        n = shape[0] * 4 if ggml_type == F32 else shape[0] // 32 * 18
        for d in shape[1:]:
            n *= d
        return OutTensor(name, shape, ggml_type, (Piece(0, n),))

    out = [t("token_embd.weight", (n_embd, n_vocab))]
    for i in range(n_layers):
        p = f"blk.{i}."
        out += [
            t(p + "attn_norm.weight", (n_embd,), F32),
            t(p + "attn_q.weight", (n_embd, n_embd)),
            t(p + "attn_k.weight", (n_embd, kv)),
            t(p + "attn_v.weight", (n_embd, kv)),
            t(p + "attn_output.weight", (n_embd, n_embd)),
            t(p + "ffn_norm.weight", (n_embd,), F32),
            t(p + "ffn_gate_inp.weight", (n_embd, n_expert), F32),
        ]
        for kind, shape in (
            ("gate", (n_embd, n_ff)),
            ("down", (n_ff, n_embd)),
            ("up", (n_embd, n_ff)),
        ):
            out += [t(f"{p}ffn_{kind}.{x}.weight", shape) for x in range(n_expert)]
    out += [t("output_norm.weight", (n_embd,), F32), t("output.weight", (n_embd, n_vocab))]
    return out


def _metadata(n_layers: int, n_embd: int, n_ff: int) -> list[bytes]:
    vocab = build_vocabulary()
    u32, f32 = ValueType.UINT32, ValueType.FLOAT32
    return [
        encode_kv("general.architecture", ValueType.STRING, "llama"),
        encode_kv("general.name", ValueType.STRING, "huozi3-synthetic"),
        encode_kv("llama.context_length", u32, 32768),
        encode_kv("llama.embedding_length", u32, n_embd),
        encode_kv("llama.block_count", u32, n_layers),
        encode_kv("llama.feed_forward_length", u32, n_ff),
        encode_kv("llama.attention.head_count", u32, 32),
        encode_kv("llama.attention.head_count_kv", u32, 8),
        encode_kv("llama.attention.layer_norm_rms_epsilon", f32, 1e-5),
        encode_kv("llama.rope.freq_base", f32, 1e6),
        encode_kv("llama.expert_count", u32, 8),
        encode_kv("llama.expert_used_count", u32, 2),
        encode_kv("general.file_type", u32, 2),
        encode_kv("tokenizer.ggml.model", ValueType.STRING, "llama"),
        encode_kv("tokenizer.ggml.tokens", ValueType.ARRAY, vocab.tokens, ValueType.STRING),
        encode_kv("tokenizer.ggml.scores", ValueType.ARRAY, vocab.scores, f32),
        encode_kv("tokenizer.ggml.token_type", ValueType.ARRAY, vocab.token_types, ValueType.INT32),
        encode_kv("tokenizer.ggml.bos_token_id", u32, huozi.BOS_ID),
        encode_kv("tokenizer.ggml.eos_token_id", u32, huozi.EOS_ID),
    ]


def write_legacy_gguf(
    path: Path, *, n_layers: int, n_embd: int, n_ff: int, sparse: bool = False, seed: int = 0
) -> int:
    """Write the file; returns its size. `sparse` leaves the data as a hole (no disk used)."""
    tensors = legacy_tensors(n_layers, n_embd, n_ff)
    header = build_header(
        version=3, kv_blobs=_metadata(n_layers, n_embd, n_ff), tensors=tensors, alignment=32
    )
    with open(path, "wb") as handle:
        handle.write(header.data)
        if sparse:
            handle.truncate(header.total_size)
            return header.total_size
        block = np.random.default_rng(seed).bytes(8 << 20)
        remaining = header.total_size - len(header.data)
        while remaining > 0:
            n = min(len(block), remaining)
            handle.write(block[:n])
            remaining -= n
        handle.flush()
        os.fsync(handle.fileno())
    return header.total_size


__all__ = ["encode_string", "legacy_tensors", "write_legacy_gguf"]
