"""The GGUF container format at the byte level: value types, tensor types, a bounds-checked reader.

Shared by the header parser (gguf.header) and the writer the repair uses (gguf.rewrite), so both
agree on every encoding. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from huozi_local.core.errors import GGUFError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


SCALAR_FORMATS: dict[ValueType, str] = {
    ValueType.UINT8: "<B",
    ValueType.INT8: "<b",
    ValueType.UINT16: "<H",
    ValueType.INT16: "<h",
    ValueType.UINT32: "<I",
    ValueType.INT32: "<i",
    ValueType.FLOAT32: "<f",
    ValueType.BOOL: "<?",
    ValueType.UINT64: "<Q",
    ValueType.INT64: "<q",
    ValueType.FLOAT64: "<d",
}


class TokenType(IntEnum):
    """SentencePiece / llama.cpp token attributes as GGUF stores them."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True)
class KVEntry:
    """One metadata entry, decoded, with the byte span it occupies in the file."""

    key: str
    value_type: ValueType
    value: Any
    start: int
    end: int
    array_type: ValueType | None = None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the header describes it. `shape` is ggml's ne order (fastest axis first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the start of the data section
    n_bytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)


def ggml_type_name(ggml_type: int) -> str:
    import gguf

    try:
        return str(gguf.GGMLQuantizationType(ggml_type).name).lower()
    except ValueError:
        return f"type{ggml_type}"


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    import gguf

    try:
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError) as exc:
        raise GGUFError(f"unknown ggml tensor type {ggml_type}") from exc
    if not shape or shape[0] % block_size:
        raise GGUFError(f"tensor row of {shape[0] if shape else 0} elements is not whole blocks")
    rows = 1
    for n in shape[1:]:
        rows *= n
    return int(shape[0] // block_size * type_size * rows)


SPLIT_EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight$")
MERGED_EXPERT_RE = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")
LAYER_RE = re.compile(r"^blk\.(\d+)\.")
# The tensors llama.cpp's `--n-cpu-moe N` keeps in CPU memory (common.h LLM_FFN_EXPS_REGEX, searched
# in `blk.N` names), plus the legacy per-expert tensors they become once repaired.
EXPERT_TENSOR_RE = re.compile(
    r"^blk\.(\d+)\.(ffn_(up|down|gate|gate_up)_(ch|)exps|ffn_(gate|up|down)\.\d+\.weight)"
)


# llama.cpp's own reader refuses nested arrays outright; gguf-py writes them, so a few levels are
# read. Without a limit, arrays nested thousands deep exhausted Python's recursion.
MAX_ARRAY_DEPTH = 4


class Cursor:
    """Bounds-checked little-endian reads over the mapped header.

    `size`: the whole file's size, which may exceed the buffer (a download's head). A count is
    checked against it before anything is read or allocated: an array of 2^40 entries in a
    5 MB file is damage, not a header to wait for.
    """

    def __init__(self, buf: mmap.mmap | bytes, path: Path, size: int | None = None) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf) if size is None else size

    def need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise GGUFError(
                f"{self.path} is truncated: the header ends at byte {len(self.buf)} "
                "(an interrupted download? run `huozi-local download` again to resume)"
            )

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        self.need(length)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return bytes(raw).decode("utf-8", errors="replace")

    def count(self, n: int, each: int, what: str) -> int:
        """`n` items of `each` bytes or more: refused when the rest of the file cannot hold them."""
        left = self.size - self.pos
        if n * each > left:
            raise GGUFError(
                f"{self.path}: {what} claims {n:,} entries, more than the {max(left, 0):,} bytes "
                "left in the file can hold: not a valid GGUF"
            )
        return n

    def value(self, vtype: ValueType, key: str) -> tuple[Any, ValueType | None]:
        """The value of metadata entry `key` (named in any error about it)."""
        if vtype == ValueType.STRING:
            return self.string(), None
        if vtype == ValueType.ARRAY:
            sub = value_type(self.unpack("<I"), self.path, key)
            return self.array(sub, self.unpack("<Q"), key, 1), sub
        return self.unpack(SCALAR_FORMATS[vtype]), None

    def array(self, sub: ValueType, count: int, key: str, depth: int) -> list[Any]:
        self.count(count, MIN_VALUE_BYTES[sub], key)
        if sub == ValueType.STRING:
            out: list[Any] = []
            buf, pos, end = self.buf, self.pos, len(self.buf)
            for _ in range(count):
                if pos + 8 > end:
                    self.pos = pos
                    self.need(8)
                (length,) = struct.unpack_from("<Q", buf, pos)
                pos += 8
                if pos + length > end:
                    self.pos = pos
                    self.need(length)
                out.append(bytes(buf[pos : pos + length]).decode("utf-8", errors="replace"))
                pos += length
            self.pos = pos
            return out
        if sub == ValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise GGUFError(
                    f"{self.path}: {key} nests arrays more than {MAX_ARRAY_DEPTH} deep: "
                    "not a valid GGUF"
                )
            nested: list[Any] = []
            for _ in range(count):
                inner = value_type(self.unpack("<I"), self.path, key)
                nested.append(self.array(inner, self.unpack("<Q"), key, depth + 1))
            return nested
        fmt = SCALAR_FORMATS[sub]
        size = struct.calcsize(fmt)
        self.need(size * count)
        values = list(struct.iter_unpack(fmt, self.buf[self.pos : self.pos + size * count]))
        self.pos += size * count
        return [v[0] for v in values]


# The fewest bytes one value of each type takes (a string: its length; an array: type and count).
MIN_VALUE_BYTES: dict[ValueType, int] = {
    **{t: struct.calcsize(f) for t, f in SCALAR_FORMATS.items()},
    ValueType.STRING: 8,
    ValueType.ARRAY: 12,
}


def value_type(raw: int, path: Path, key: str) -> ValueType:
    try:
        return ValueType(raw)
    except ValueError as exc:
        raise GGUFError(
            f"{path}: {key} has an unknown metadata type {raw}: not a valid GGUF"
        ) from exc


def align(offset: int, alignment: int) -> int:
    """The first offset at or after `offset` that is a multiple of `alignment` (GGUF pads the
    tensor-info section and every tensor's data to general.alignment)."""
    return offset + (-offset % alignment)
