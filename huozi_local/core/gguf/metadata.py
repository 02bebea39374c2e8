"""What a GGUF header's metadata says, typed: dimensions, vocabulary, special tokens, template.

`GGUFFile` (header.py) is this plus the tensor list. Every value is read through `HeaderValues`
(type and range checked, a wrong one refused naming its key) and cached, and `check_values`
reads them all when the header is parsed: a crafted or damaged header is refused in one line
by whichever command opened it, and nothing later computes with a raw value.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from huozi_local.core.errors import GGUFError
from huozi_local.core.gguf.byte_format import LAYER_RE, KVEntry, TensorInfo, TokenType
from huozi_local.core.gguf.values import UINT32_MAX, HeaderValues


@dataclass(frozen=True)
class SpecialToken:
    role: str  # "bos", "eos", "eot", "begin_of_utterance", ...
    token_id: int
    text: str
    token_type: str


# Bounds for the values the memory model and the repair compute with: llama.cpp's own limits
# where it has them (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS), else far beyond any model, so only a
# crafted or damaged header meets them.
MAX_LAYERS = 512
MAX_EXPERTS = 512
MAX_WIDTH = 1 << 24  # embedding and feed-forward sizes
MAX_HEADS = 1 << 16  # attention heads, and elements per head
# What `huozi-local repair` records in the files it writes (the source's sha256, its version).
SOURCE_SHA256_KEY = "huozi_local.repair.source_sha256"
VERSION_KEY = "huozi_local.repair.version"
SPECIAL_TOKEN_ROLES = ("bos", "eos", "eot", "eom", "unknown", "padding")
_CHECKED_VALUES = (
    "architecture",
    "name",
    "n_layers",
    "context_length",
    "n_embd",
    "n_ff",
    "n_head",
    "n_head_kv",
    "head_dim",
    "n_expert",
    "n_expert_used",
    "vocab_size",
    "token_types",
    "special_token_ids",
    "chat_template",
    "file_type",
    "source_sha256",
)


class HeaderMetadata:
    """The metadata half of `GGUFFile`: properties over its `path`, `kv` and `tensors`."""

    path: Path
    kv: dict[str, KVEntry]
    tensors: list[TensorInfo]

    @cached_property
    def values(self) -> HeaderValues:
        return HeaderValues(self.path, self.kv)

    def _arch_key(self, suffix: str) -> str:
        return f"{self.architecture}.{suffix}"

    @cached_property
    def architecture(self) -> str:
        return self.values.string("general.architecture") or "unknown"

    @cached_property
    def name(self) -> str:
        return self.values.string("general.name") or self.path.stem

    @cached_property
    def n_layers(self) -> int:
        return self.values.integer(self._arch_key("block_count"), 0, MAX_LAYERS) or 0

    @cached_property
    def context_length(self) -> int:
        return self.values.integer(self._arch_key("context_length"), 1, UINT32_MAX) or 0

    @cached_property
    def n_embd(self) -> int:
        return self.values.integer(self._arch_key("embedding_length"), 1, MAX_WIDTH) or 0

    @cached_property
    def n_ff(self) -> int:
        key = self._arch_key("feed_forward_length")
        return self.values.per_layer(key, self.n_layers, 0, MAX_WIDTH) or 0

    @cached_property
    def n_head(self) -> int:
        key = self._arch_key("attention.head_count")
        return self.values.per_layer(key, self.n_layers, 0, MAX_HEADS) or 0

    @cached_property
    def n_head_kv(self) -> int:
        key = self._arch_key("attention.head_count_kv")
        found = self.values.per_layer(key, self.n_layers, 0, MAX_HEADS)
        return self.n_head if found is None else found

    @cached_property
    def head_dim(self) -> int:
        key_length = self.values.integer(self._arch_key("attention.key_length"), 0, MAX_HEADS)
        if key_length:
            return key_length
        return self.n_embd // self.n_head if self.n_head else 0

    @cached_property
    def n_expert(self) -> int:
        return self.values.integer(self._arch_key("expert_count"), 0, MAX_EXPERTS) or 0

    @cached_property
    def n_expert_used(self) -> int:
        return self.values.integer(self._arch_key("expert_used_count"), 0, self.n_expert) or 0

    @cached_property
    def tokens(self) -> list[str]:
        return self.values.strings("tokenizer.ggml.tokens") or []

    @cached_property
    def vocab_size(self) -> int:
        if self.values.has("tokenizer.ggml.tokens"):
            return len(self.tokens)
        return self.values.integer(self._arch_key("vocab_size"), 0, UINT32_MAX) or 0

    @cached_property
    def token_types(self) -> list[int]:
        """One type per token: llama.cpp reads one for each, so a shorter list was read past
        its end (and the repair indexed past it)."""
        found = self.values.integers(
            "tokenizer.ggml.token_type", -(2**31), 2**31 - 1, length=len(self.tokens)
        )
        return found or []

    @cached_property
    def special_token_ids(self) -> dict[str, int]:
        """{role: id} of the BOS/EOS/EOT/... ids the header sets, each an id of its vocabulary.

        An id past the vocabulary is left out, not refused: llama.cpp warns and ignores it, and
        conversions do write one (a padding id equal to the vocabulary size), so refusing would
        turn away a file llama.cpp loads. A value that is not a whole number is still refused.
        """
        found: dict[str, int] = {}
        for role in SPECIAL_TOKEN_ROLES:
            token_id = self.values.integer(f"tokenizer.ggml.{role}_token_id", 0, UINT32_MAX)
            if token_id is not None and (not self.vocab_size or token_id < self.vocab_size):
                found[role] = token_id
        return found

    @cached_property
    def chat_template(self) -> str | None:
        return self.values.string("tokenizer.chat_template") or None

    @cached_property
    def file_type(self) -> int | None:
        """general.file_type: llama.cpp's LLAMA_FTYPE number of the weights' quantization."""
        return self.values.integer("general.file_type", 0, UINT32_MAX)

    @cached_property
    def source_sha256(self) -> str | None:
        """The sha256 of the file a repair made this one from (None: not written by one)."""
        return self.values.string(SOURCE_SHA256_KEY)

    def check_values(self) -> None:
        """Read every value this app uses, so a wrong one is refused now, in one line."""
        for name in _CHECKED_VALUES:
            getattr(self, name)
        self._check_layers()

    def _check_layers(self) -> None:
        """Every `blk.N.*` tensor in a layer the header declares (N sized lists of layers)."""
        limit = self.n_layers if self.values.has(self._arch_key("block_count")) else MAX_LAYERS
        for tensor in self.tensors:
            match = LAYER_RE.match(tensor.name)
            if match and int(match.group(1)) >= limit:
                raise GGUFError(
                    f"{self.path}: tensor {tensor.name} is in layer {match.group(1)}, but "
                    f"{self._arch_key('block_count')} is {self.n_layers or 'not set'}"
                )

    def token_text(self, token_id: int) -> str:
        if not 0 <= token_id < len(self.tokens):
            return ""
        return self.tokens[token_id]

    def token_type_name(self, token_id: int) -> str:
        types = self.token_types
        if not 0 <= token_id < len(types):
            return "missing"
        try:
            return TokenType(types[token_id]).name.lower()
        except ValueError:
            return f"type{types[token_id]}"

    @cached_property
    def _token_index(self) -> dict[str, int]:
        return {tok: i for i, tok in enumerate(self.tokens)}

    def token_id(self, text: str) -> int | None:
        return self._token_index.get(text)

    def special_tokens(self) -> list[SpecialToken]:
        """BOS/EOS/EOT/etc. from metadata, plus the huozi utterance tokens when present."""
        from huozi_local.core import huozi

        found = [
            SpecialToken(role, i, self.token_text(i), self.token_type_name(i))
            for role, i in self.special_token_ids.items()
        ]
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

    def turn_fixes_needed(self) -> list[str]:
        """Metadata a huozi file lacks for modern tools to end turns and format chats right."""
        from huozi_local.core import huozi

        if not self.is_huozi:
            return []
        needed: list[str] = []
        for role in ("eos", "eot"):
            if self.special_token_ids.get(role) != huozi.END_OF_UTTERANCE_ID:
                needed.append(f"{role}_token_id")
        for token_id in (huozi.BEGIN_OF_UTTERANCE_ID, huozi.END_OF_UTTERANCE_ID):
            if self.token_type_name(token_id) != "control":
                needed.append(f"token_type[{token_id}]")
        if self.chat_template is None:
            needed.append("chat_template")
        return needed
