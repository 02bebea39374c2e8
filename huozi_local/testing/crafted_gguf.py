"""GGUF files with one header value wrong: the damage a crafted or corrupted download carries.

The base is a small merged-layout huozi model (the real 57002-token vocabulary, two layers, the
tensor data a sparse hole), valid as it is. A test replaces, removes or adds metadata entries,
typed (`Value`) or as raw bytes (`Raw`: a count that lies, arrays nested thousands deep), or
swaps the tensor list, and gets a file every reader must refuse in one line naming the key.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from huozi_local.core import huozi
from huozi_local.core.gguf.byte_format import TokenType, ValueType
from huozi_local.core.gguf.rewrite import OutTensor, build_header, encode_string, encode_value
from huozi_local.testing.real_shape import RealShape, real_shape_tensors
from huozi_local.testing.vocab import build_vocabulary

SHAPE = RealShape(n_layers=2, n_embd=64, n_head=2, n_head_kv=1, n_ff=64, context_length=4096)


@dataclass(frozen=True)
class Value:
    """A well-formed entry of any type: `Value(ValueType.FLOAT32, float("nan"))`."""

    value_type: ValueType
    value: Any
    array_type: ValueType | None = None

    def encode(self) -> bytes:
        head = struct.pack("<I", int(self.value_type))
        return head + encode_value(self.value_type, self.value, self.array_type)


@dataclass(frozen=True)
class Raw:
    """An entry's type and payload exactly as given, however wrong."""

    value_type: int
    payload: bytes

    def encode(self) -> bytes:
        return struct.pack("<I", self.value_type) + self.payload


Entry = Value | Raw


def nested_arrays(depth: int) -> Raw:
    """An array of an array of ... `depth` levels, the innermost an empty uint8 array."""
    level = struct.pack("<IQ", int(ValueType.ARRAY), 1)
    innermost = struct.pack("<IQ", int(ValueType.UINT8), 0)
    return Raw(int(ValueType.ARRAY), level * (depth - 1) + innermost)


def array_claiming(count: int, element: ValueType = ValueType.FLOAT32) -> Raw:
    """An array whose count promises far more elements than follow it."""
    return Raw(int(ValueType.ARRAY), struct.pack("<IQ", int(element), count))


@cache
def base_entries() -> dict[str, Entry]:
    """The metadata of a valid small huozi model, in a converter's order."""
    vocab = build_vocabulary()
    types = list(vocab.token_types)
    for token_id in (huozi.BEGIN_OF_UTTERANCE_ID, huozi.END_OF_UTTERANCE_ID):
        types[token_id] = int(TokenType.CONTROL)  # as a repaired file has them: nothing to fix
    u32, f32, s = ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING
    arr = ValueType.ARRAY
    return {
        "general.architecture": Value(s, "llama"),
        "general.name": Value(s, "huozi3-crafted"),
        "general.alignment": Value(u32, 32),
        "llama.context_length": Value(u32, SHAPE.context_length),
        "llama.embedding_length": Value(u32, SHAPE.n_embd),
        "llama.block_count": Value(u32, SHAPE.n_layers),
        "llama.feed_forward_length": Value(u32, SHAPE.n_ff),
        "llama.rope.dimension_count": Value(u32, SHAPE.head_dim),
        "llama.attention.head_count": Value(u32, SHAPE.n_head),
        "llama.attention.head_count_kv": Value(u32, SHAPE.n_head_kv),
        "llama.attention.layer_norm_rms_epsilon": Value(f32, 1e-5),
        "llama.expert_count": Value(u32, SHAPE.n_expert),
        "llama.expert_used_count": Value(u32, SHAPE.n_expert_used),
        "general.file_type": Value(u32, 2),
        "tokenizer.ggml.model": Value(s, "llama"),
        "tokenizer.ggml.tokens": Value(arr, vocab.tokens, s),
        "tokenizer.ggml.scores": Value(arr, vocab.scores, f32),
        "tokenizer.ggml.token_type": Value(arr, types, ValueType.INT32),
        "tokenizer.ggml.bos_token_id": Value(u32, huozi.BOS_ID),
        "tokenizer.ggml.eos_token_id": Value(u32, huozi.END_OF_UTTERANCE_ID),
        "tokenizer.ggml.eot_token_id": Value(u32, huozi.END_OF_UTTERANCE_ID),
        "tokenizer.chat_template": Value(s, huozi.CHAT_TEMPLATE),
    }


def _encoded(key: str, entry: Entry) -> bytes:
    return encode_string(key) + entry.encode()


@cache
def _base_blobs() -> dict[str, bytes]:
    """The base entries encoded once (the vocabulary is most of the header)."""
    return {key: _encoded(key, entry) for key, entry in base_entries().items()}


def write_crafted_gguf(
    path: Path,
    replace: Mapping[str, Entry | None] | None = None,
    *,
    tensors: Sequence[OutTensor] | None = None,
    alignment: int = 32,
) -> Path:
    """The base model with `replace`'s entries changed (None removes one; new keys are added)
    and `tensors` instead of its own (the data laid out at `alignment`, a sparse hole)."""
    blobs = dict(_base_blobs())
    for key, entry in (replace or {}).items():
        if entry is None:
            blobs.pop(key, None)
        else:
            blobs[key] = _encoded(key, entry)
    header = build_header(
        version=3,
        kv_blobs=list(blobs.values()),
        tensors=real_shape_tensors(SHAPE) if tensors is None else tensors,
        alignment=alignment,
    )
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(header.data)
        handle.truncate(header.total_size)
    os.replace(tmp, path)
    return path


__all__ = [
    "SHAPE",
    "Raw",
    "Value",
    "array_claiming",
    "base_entries",
    "nested_arrays",
    "write_crafted_gguf",
]
