"""Read a GGUF file's header: metadata, tensor infos and the byte layout behind them.

Only the header is read (through mmap); tensor data is never touched, so a 27 GB model inspects in
milliseconds. gguf-py's GGUFReader builds one numpy view per vocabulary string and takes seconds
on a 57002-token vocabulary, which is why this module parses the format itself. It keeps the raw
byte span of every metadata entry, so the repair can copy entries it does not change verbatim.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (version 2 and 3).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from huozi_local.core.errors import GGUFError
from huozi_local.core.gguf.byte_format import (
    DEFAULT_ALIGNMENT,
    EXPERT_TENSOR_RE,
    GGUF_MAGIC,
    LAYER_RE,
    MERGED_EXPERT_RE,
    SPLIT_EXPERT_RE,
    Cursor,
    KVEntry,
    TensorInfo,
    align,
    tensor_nbytes,
    value_type,
)
from huozi_local.core.gguf.metadata import HeaderMetadata
from huozi_local.core.gguf.values import HeaderValues

MAX_ALIGNMENT = 1 << 30
# The fewest bytes a metadata entry (key length, type, a one-byte value) and a tensor info (name
# length, dimension count, type, offset) take: counts are checked against what the file can hold.
MIN_KV_BYTES = 8 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8


@dataclass
class GGUFFile(HeaderMetadata):
    """Everything a GGUF header says. Build with `read_gguf`.

    The metadata is read through typed, range-checked properties (metadata.py) that
    `read_gguf` reads once before it returns: a header with a wrong value is refused in one
    line naming the key, and nothing later computes with a raw value.
    """

    path: Path
    version: int
    file_size: int
    tensor_count: int
    kv: dict[str, KVEntry]
    tensors: list[TensorInfo]
    kv_start: int
    kv_end: int
    tensor_infos_end: int
    data_offset: int
    alignment: int

    # -- tensors --------------------------------------------------------------------------
    @cached_property
    def tensor_by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    @property
    def layout(self) -> str:
        """`legacy-split` (one tensor per expert), `merged` (3-D experts) or `dense`."""
        if any(SPLIT_EXPERT_RE.match(t.name) for t in self.tensors):
            return "legacy-split"
        if any(MERGED_EXPERT_RE.match(t.name) for t in self.tensors) or self.n_expert:
            return "merged"
        return "dense"

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def layer_bytes(self) -> list[int]:
        """Bytes of `blk.N.*` for each layer N, in order."""
        sizes = [0] * self.n_layers
        for tensor in self.tensors:
            match = LAYER_RE.match(tensor.name)
            if match:
                index = int(match.group(1))
                if index >= len(sizes):
                    sizes.extend([0] * (index + 1 - len(sizes)))
                sizes[index] += tensor.n_bytes
        return sizes

    def layer_expert_bytes(self) -> list[int]:
        """Bytes of each layer's MoE expert tensors (what `--n-cpu-moe` keeps in RAM)."""
        sizes = [0] * self.n_layers
        for tensor in self.tensors:
            match = EXPERT_TENSOR_RE.match(tensor.name)
            if match and int(match.group(1)) < len(sizes):
                sizes[int(match.group(1))] += tensor.n_bytes
        return sizes

    def non_layer_bytes(self) -> dict[str, int]:
        """Bytes outside the layers (token_embd, output, output_norm, ...), by tensor name."""
        return {t.name: t.n_bytes for t in self.tensors if not LAYER_RE.match(t.name)}

    def quantization_groups(self) -> dict[str, dict[str, int]]:
        """Tensor types per group (`token_embd`, `attn_q`, `ffn_down_exps`, ...): {type: count}."""
        groups: dict[str, dict[str, int]] = {}
        for tensor in self.tensors:
            group = _group_name(tensor.name)
            counts = groups.setdefault(group, {})
            counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
        return groups

    def missing_parts(self) -> list[str]:
        """What the file lacks to be a model at all (no repair can add it)."""
        missing: list[str] = []
        if not self.tensors:
            missing.append("no tensors")
        if not self.tokens:
            missing.append("no token list (tokenizer.ggml.tokens)")
        return missing

    def check_is_model(self) -> None:
        """Refuse, in one line, a file that is no model to chat with (import, loading)."""
        missing = self.missing_parts()
        if missing:
            raise GGUFError(
                f"{self.path} has {' and '.join(missing)}: it is not a model huozi-local can run"
            )

    def load_blockers(self) -> list[str]:
        """Why today's llama.cpp would refuse this file as it is (empty when it would load)."""
        blockers: list[str] = []
        if self.layout == "legacy-split":
            blockers.append(
                "experts are stored one tensor each (pre-2024 layout); llama.cpp now needs "
                "merged 'ffn_*_exps' tensors: run `huozi-local repair`"
            )
        if self.architecture not in KNOWN_ARCHITECTURES:
            blockers.append(f"architecture '{self.architecture}' is not one huozi-local knows")
        return blockers + [f"it has {part}" for part in self.missing_parts()]


# Architectures llama.cpp loads that this tool has been checked with.
KNOWN_ARCHITECTURES = frozenset(
    {
        "llama",
        "qwen2",
        "qwen3",
        "qwen2moe",
        "qwen3moe",
        "mistral3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "deepseek2",
        "glm4",
        "internlm2",
        "chatglm",
        "baichuan",
        "yi",
        "olmoe",
        "granite",
    }
)


def _group_name(name: str) -> str:
    match = SPLIT_EXPERT_RE.match(name)
    if match:
        return f"ffn_{match.group(2)}.E"
    stem = LAYER_RE.sub("", name)
    return stem.removesuffix(".weight").removesuffix(".bias")


def read_gguf(path: str | Path, *, declared_size: int | None = None) -> GGUFFile:
    """Parse a GGUF header. Raises GGUFError with one line for anything a user can hit.

    `declared_size`: `path` holds only the first bytes of a file of this size (a download's
    head): the header is parsed from them and checked against the whole file's size.
    """
    path = Path(path)
    try:
        if not path.is_dir() and path.exists() and not path.is_file():
            # A pipe or a device: opening a pipe waits for a writer that never comes.
            raise GGUFError(f"{path} is not a regular file, so not a GGUF model file")
        handle = open(path, "rb")
    except FileNotFoundError as exc:
        raise GGUFError(f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise GGUFError(f"{path} is a folder, not a GGUF file") from exc
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        size = path.stat().st_size
        if size < 24:
            raise GGUFError(f"{path} is not a GGUF model file (only {size} bytes)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path, size if declared_size is None else declared_size)


def _parse(buf: mmap.mmap, path: Path, size: int) -> GGUFFile:
    if buf[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF model file (it does not start with 'GGUF')")
    cur = Cursor(buf, path, size)
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path} is GGUF version {version}; only versions 2 and 3 are supported")
    tensor_count = cur.unpack("<Q")
    kv_count = cur.unpack("<Q")
    if tensor_count > 1_000_000 or kv_count > 1_000_000:
        raise GGUFError(f"{path} has an implausible header: not a valid GGUF")
    cur.count(kv_count, MIN_KV_BYTES, "the metadata count")
    cur.count(tensor_count, MIN_TENSOR_INFO_BYTES, "the tensor count")
    kv_start = cur.pos
    kv: dict[str, KVEntry] = {}
    for _ in range(kv_count):
        start = cur.pos
        key = cur.string()
        vtype = value_type(cur.unpack("<I"), path, key)
        value, sub = cur.value(vtype, key)
        if key in kv:  # llama.cpp refuses it too: which of the two would count is anyone's guess
            raise GGUFError(f"{path}: {key} is set twice: not a valid GGUF")
        kv[key] = KVEntry(key, vtype, value, start, cur.pos, sub)
    kv_end = cur.pos
    tensors: list[TensorInfo] = []
    for _ in range(tensor_count):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 8:
            raise GGUFError(f"{path}: tensor {name} has {n_dims} dimensions: not a valid GGUF")
        shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
        ggml_type = cur.unpack("<I")
        offset = cur.unpack("<Q")
        tensors.append(TensorInfo(name, shape, ggml_type, offset, tensor_nbytes(shape, ggml_type)))
    infos_end = cur.pos
    alignment = HeaderValues(path, kv).power_of_two("general.alignment", MAX_ALIGNMENT)
    alignment = alignment or DEFAULT_ALIGNMENT
    gguf = GGUFFile(
        path=path,
        version=version,
        file_size=size,
        tensor_count=tensor_count,
        kv=kv,
        tensors=tensors,
        kv_start=kv_start,
        kv_end=kv_end,
        tensor_infos_end=infos_end,
        data_offset=align(infos_end, alignment),
        alignment=alignment,
    )
    gguf.check_values()
    expected = expected_file_size(gguf)
    if size < expected:
        raise GGUFError(
            f"{path} is truncated: {size:,} of {expected:,} bytes "
            "(an interrupted download? run `huozi-local download` again to resume)"
        )
    return gguf


def expected_file_size(gguf: GGUFFile) -> int:
    if not gguf.tensors:
        return gguf.data_offset
    return gguf.data_offset + max(t.offset + t.n_bytes for t in gguf.tensors)


def quant_of(gguf: GGUFFile) -> str | None:
    """`q4_0`, `q2_k`, ... from general.file_type (llama.cpp's LLAMA_FTYPE numbering), the name
    the catalog and the model folder use; None when the header does not say or the number is new."""
    file_type = gguf.file_type
    if file_type is None:
        return None
    try:
        import gguf as gguf_py

        name = gguf_py.LlamaFileType(int(file_type)).name.lower()
    except (ValueError, ImportError):
        return None
    return str(name).removeprefix("mostly_").removeprefix("all_")
