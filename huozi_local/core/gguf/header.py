"""Read a GGUF file's header: metadata, tensor infos and the byte layout behind them.

Only the header is read (through mmap); tensor data is never touched, so a 27 GB model inspects in
milliseconds. gguf-py's GGUFReader builds one numpy view per vocabulary string and takes seconds
on a 57002-token vocabulary, which is why this module parses the format itself. It keeps the raw
byte span of every metadata entry, so the repair can copy entries it does not change verbatim.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (version 2 and 3).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

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
    TokenType,
    align,
    tensor_nbytes,
    value_type,
)


@dataclass(frozen=True)
class SpecialToken:
    role: str  # "bos", "eos", "eot", "begin_of_utterance", ...
    token_id: int
    text: str
    token_type: str


@dataclass
class GGUFFile:
    """Everything a GGUF header says. Build with `read_gguf`."""

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
    _layer_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- metadata -----------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        entry = self.kv.get(key)
        return default if entry is None else entry.value

    @property
    def architecture(self) -> str:
        return str(self.get("general.architecture", "unknown"))

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        return self.get(f"{self.architecture}.{suffix}", default)

    @property
    def name(self) -> str:
        return str(self.get("general.name", self.path.stem))

    @property
    def n_layers(self) -> int:
        return int(self.arch_get("block_count", 0))

    @property
    def context_length(self) -> int:
        return int(self.arch_get("context_length", 0))

    @property
    def n_embd(self) -> int:
        return int(self.arch_get("embedding_length", 0))

    @property
    def n_ff(self) -> int:
        value = self.arch_get("feed_forward_length", 0)
        return int(value[0] if isinstance(value, list) else value)

    @property
    def n_head(self) -> int:
        value = self.arch_get("attention.head_count", 0)
        return int(value[0] if isinstance(value, list) else value)

    @property
    def n_head_kv(self) -> int:
        value = self.arch_get("attention.head_count_kv", self.n_head)
        return int(value[0] if isinstance(value, list) else value)

    @property
    def head_dim(self) -> int:
        key_length = self.arch_get("attention.key_length")
        if key_length:
            return int(key_length)
        return self.n_embd // self.n_head if self.n_head else 0

    @property
    def n_expert(self) -> int:
        return int(self.arch_get("expert_count", 0))

    @property
    def n_expert_used(self) -> int:
        return int(self.arch_get("expert_used_count", 0))

    @property
    def tokens(self) -> list[str]:
        return list(self.get("tokenizer.ggml.tokens", []))

    @property
    def vocab_size(self) -> int:
        entry = self.kv.get("tokenizer.ggml.tokens")
        return len(entry.value) if entry else int(self.arch_get("vocab_size", 0))

    @property
    def token_types(self) -> list[int]:
        return list(self.get("tokenizer.ggml.token_type", []))

    @property
    def chat_template(self) -> str | None:
        value = self.get("tokenizer.chat_template")
        return str(value) if value else None

    def token_text(self, token_id: int) -> str:
        entry = self.kv.get("tokenizer.ggml.tokens")
        if entry is None or not 0 <= token_id < len(entry.value):
            return ""
        return str(entry.value[token_id])

    def token_type_name(self, token_id: int) -> str:
        types = self.get("tokenizer.ggml.token_type") or []
        if not 0 <= token_id < len(types):
            return "missing"
        try:
            return TokenType(int(types[token_id])).name.lower()
        except ValueError:
            return f"type{types[token_id]}"

    def token_id(self, text: str) -> int | None:
        entry = self.kv.get("tokenizer.ggml.tokens")
        if entry is None:
            return None
        index = self._layer_cache.get("token_index")
        if index is None:
            index = {tok: i for i, tok in enumerate(entry.value)}
            self._layer_cache["token_index"] = index
        found = index.get(text)
        return None if found is None else int(found)

    def special_tokens(self) -> list[SpecialToken]:
        """BOS/EOS/EOT/etc. from metadata, plus the huozi utterance tokens when present."""
        from huozi_local.core import huozi

        found: list[SpecialToken] = []
        for role in ("bos", "eos", "eot", "eom", "unknown", "padding"):
            token_id = self.get(f"tokenizer.ggml.{role}_token_id")
            if token_id is None:
                continue
            found.append(
                SpecialToken(
                    role,
                    int(token_id),
                    self.token_text(int(token_id)),
                    self.token_type_name(int(token_id)),
                )
            )
        for role, text in (
            ("begin_of_utterance", huozi.BEGIN_OF_UTTERANCE),
            ("end_of_utterance", huozi.END_OF_UTTERANCE),
        ):
            token_id = self.token_id(text)
            if token_id is not None:
                found.append(SpecialToken(role, token_id, text, self.token_type_name(token_id)))
        return found

    @property
    def is_huozi(self) -> bool:
        """A huozi-vocabulary model: the utterance tokens sit at their trained ids."""
        from huozi_local.core import huozi

        return (
            self.token_text(huozi.BEGIN_OF_UTTERANCE_ID) == huozi.BEGIN_OF_UTTERANCE
            and self.token_text(huozi.END_OF_UTTERANCE_ID) == huozi.END_OF_UTTERANCE
        )

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
        return blockers

    def turn_fixes_needed(self) -> list[str]:
        """Metadata a huozi file lacks for modern tools to end turns and format chats right."""
        from huozi_local.core import huozi

        if not self.is_huozi:
            return []
        needed: list[str] = []
        if self.get("tokenizer.ggml.eos_token_id") != huozi.END_OF_UTTERANCE_ID:
            needed.append("eos_token_id")
        if self.get("tokenizer.ggml.eot_token_id") != huozi.END_OF_UTTERANCE_ID:
            needed.append("eot_token_id")
        for token_id in (huozi.BEGIN_OF_UTTERANCE_ID, huozi.END_OF_UTTERANCE_ID):
            if self.token_type_name(token_id) != "control":
                needed.append(f"token_type[{token_id}]")
        if self.chat_template is None:
            needed.append("chat_template")
        return needed


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
    cur = Cursor(buf, path)
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path} is GGUF version {version}; only versions 2 and 3 are supported")
    tensor_count = cur.unpack("<Q")
    kv_count = cur.unpack("<Q")
    if tensor_count > 1_000_000 or kv_count > 1_000_000:
        raise GGUFError(f"{path} has an implausible header: not a valid GGUF")
    kv_start = cur.pos
    kv: dict[str, KVEntry] = {}
    for _ in range(kv_count):
        start = cur.pos
        key = cur.string()
        vtype = value_type(cur.unpack("<I"), path)
        value, sub = cur.value(vtype)
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
    alignment_entry = kv.get("general.alignment")
    alignment = int(alignment_entry.value) if alignment_entry else DEFAULT_ALIGNMENT
    data_offset = align(infos_end, alignment)
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
        data_offset=data_offset,
        alignment=alignment,
    )
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
    file_type = gguf.get("general.file_type")
    if file_type is None:
        return None
    try:
        import gguf as gguf_py

        name = gguf_py.LlamaFileType(int(file_type)).name.lower()
    except (ValueError, ImportError):
        return None
    return str(name).removeprefix("mostly_").removeprefix("all_")
