"""A runnable slice of huozi3 at its official tensor shapes: a few layers, written in a moment.

The memory model must hold at real shapes (compute buffers scale with n_embd, n_ff, n_vocab and
n_head, which tiny models shrink), and llama.cpp's allocations can only be read from a file it
loads. This writes a merged-layout (today's) GGUF with huozi3's dimensions: hidden 4096, 32 heads,
8 KV heads, FFN 14336, 8 experts / 2 used, the full 57002-token vocabulary, `n_layers` layers of
q4_0 matrices. The tensor data is a sparse hole: it reads as zeros, which is a valid q4_0 block
(scale 0) and a valid f32, so the model loads and runs (it predicts nothing useful) while taking
no disk space and no time to write. Two layers are about 1.8 GB of address space, 0 bytes of disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huozi_local.core import huozi
from huozi_local.core.gguf.byte_format import ValueType
from huozi_local.core.gguf.rewrite import OutTensor, Piece, build_header, encode_kv
from huozi_local.testing.vocab import build_vocabulary

F32, Q4_0 = 0, 2


@dataclass(frozen=True)
class RealShape:
    """huozi3's official dimensions (Mixtral-8x7B); only the layer count is ours to choose."""

    n_layers: int = 2
    n_embd: int = 4096
    n_head: int = 32
    n_head_kv: int = 8
    n_ff: int = 14336
    n_expert: int = 8
    n_expert_used: int = 2
    context_length: int = 32768

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _tensor(name: str, shape: tuple[int, ...], ggml_type: int = Q4_0) -> OutTensor:
    n = shape[0] * 4 if ggml_type == F32 else shape[0] // 32 * 18
    for d in shape[1:]:
        n *= d
    return OutTensor(name, shape, ggml_type, (Piece(0, n),))


def real_shape_tensors(shape: RealShape) -> list[OutTensor]:
    """The tensor list of a merged-layout huozi3 (GGUF dimension order: row length first)."""
    e, kv, ff, x = shape.n_embd, shape.n_head_kv * shape.head_dim, shape.n_ff, shape.n_expert
    out = [_tensor("token_embd.weight", (e, huozi.VOCAB_SIZE))]
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        out += [
            _tensor(p + "attn_norm.weight", (e,), F32),
            _tensor(p + "attn_q.weight", (e, e)),
            _tensor(p + "attn_k.weight", (e, kv)),
            _tensor(p + "attn_v.weight", (e, kv)),
            _tensor(p + "attn_output.weight", (e, e)),
            _tensor(p + "ffn_norm.weight", (e,), F32),
            _tensor(p + "ffn_gate_inp.weight", (e, x), F32),
            _tensor(p + "ffn_gate_exps.weight", (e, ff, x)),
            _tensor(p + "ffn_down_exps.weight", (ff, e, x)),
            _tensor(p + "ffn_up_exps.weight", (e, ff, x)),
        ]
    out += [
        _tensor("output_norm.weight", (e,), F32),
        _tensor("output.weight", (e, huozi.VOCAB_SIZE)),
    ]
    return out


def _metadata(shape: RealShape) -> list[bytes]:
    vocab = build_vocabulary()
    u32, f32 = ValueType.UINT32, ValueType.FLOAT32
    return [
        encode_kv("general.architecture", ValueType.STRING, "llama"),
        encode_kv("general.name", ValueType.STRING, f"huozi3-real-shape-{shape.n_layers}l"),
        encode_kv("llama.context_length", u32, shape.context_length),
        encode_kv("llama.embedding_length", u32, shape.n_embd),
        encode_kv("llama.block_count", u32, shape.n_layers),
        encode_kv("llama.feed_forward_length", u32, shape.n_ff),
        encode_kv("llama.rope.dimension_count", u32, shape.head_dim),
        encode_kv("llama.attention.head_count", u32, shape.n_head),
        encode_kv("llama.attention.head_count_kv", u32, shape.n_head_kv),
        encode_kv("llama.attention.layer_norm_rms_epsilon", f32, 1e-5),
        encode_kv("llama.rope.freq_base", f32, 1e6),
        encode_kv("llama.expert_count", u32, shape.n_expert),
        encode_kv("llama.expert_used_count", u32, shape.n_expert_used),
        encode_kv("general.file_type", u32, 2),  # MOSTLY_Q4_0
        encode_kv("tokenizer.ggml.model", ValueType.STRING, "llama"),
        encode_kv("tokenizer.ggml.tokens", ValueType.ARRAY, vocab.tokens, ValueType.STRING),
        encode_kv("tokenizer.ggml.scores", ValueType.ARRAY, vocab.scores, f32),
        encode_kv("tokenizer.ggml.token_type", ValueType.ARRAY, vocab.token_types, ValueType.INT32),
        encode_kv("tokenizer.ggml.bos_token_id", u32, huozi.BOS_ID),
        encode_kv("tokenizer.ggml.eos_token_id", u32, huozi.END_OF_UTTERANCE_ID),
    ]


def write_real_shape_gguf(path: Path, shape: RealShape | None = None) -> Path:
    """Write the slice to `path` (sparse: the data is a hole of zeros) and return the path."""
    shape = shape or RealShape()
    header = build_header(
        version=3, kv_blobs=_metadata(shape), tensors=real_shape_tensors(shape), alignment=32
    )
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(header.data)
        handle.truncate(header.total_size)
    os.replace(tmp, path)
    return path


__all__ = ["RealShape", "real_shape_tensors", "write_real_shape_gguf"]
