"""What the loaded model's vocabulary says: token pieces, which tokens end a turn, which text
the model may never receive as a special token, and the tokenizer built from that.

Read once from llama.cpp's vocabulary when the engine is made; the engine asks here instead of
walking 57,002 token attributes itself.
"""

from __future__ import annotations

import ctypes
from typing import Any

from huozi_local.core import huozi
from huozi_local.core.chat.llama_model import HuoziLlama
from huozi_local.core.chat.safe_tokenizer import SafeTokenizer
from huozi_local.core.gguf.header import GGUFFile

_ORDINARY_ATTRS = (1 << 0) | (1 << 2) | (1 << 5)  # LLAMA_TOKEN_ATTR_UNKNOWN | NORMAL | BYTE
_SPECIAL_ATTRS = (1 << 3) | (1 << 4)  # CONTROL | USER_DEFINED: what llama.cpp may parse


class Vocabulary:
    def __init__(self, llm: HuoziLlama, gguf: GGUFFile) -> None:
        import llama_cpp

        self._vocab: Any = llm.vocab
        self._pieces: dict[int, bytes] = {}
        n_vocab = llm.n_vocab()
        self.n_vocab = n_vocab
        attrs = [int(llama_cpp.llama_vocab_get_attr(self._vocab, i)) for i in range(n_vocab)]
        unsafe = frozenset(i for i, a in enumerate(attrs) if not a & _ORDINARY_ATTRS)
        special_texts = [
            self.piece(i, special=True).decode("utf-8", "replace")
            for i, a in enumerate(attrs)
            if a & _SPECIAL_ATTRS
        ]
        byte_ids = {}
        for i, text in enumerate(gguf.tokens[:n_vocab]):
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                byte_ids[int(text[3:5], 16)] = i
        self.tokenizer = SafeTokenizer(
            lambda data, special: llm.tokenize(data, add_bos=False, special=special),
            unsafe,
            special_texts,
            byte_ids,
        )
        stops = {i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, i)}
        if gguf.is_huozi:
            stops.add(huozi.END_OF_UTTERANCE_ID)
        self.stop_ids = frozenset(stops)
        """Tokens that end a reply: the vocabulary's end-of-generation ids, and for huozi 57001
        (the official files do not mark it)."""
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.bos_id = llm.token_bos()
        self.eos_id = llm.token_eos()

    def piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes of one token as llama.cpp writes it."""
        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token_id, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def reply_piece(self, token_id: int) -> bytes:
        """`piece` for the reply's tokens, remembered: a reply repeats its pieces."""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self.piece(token_id)
            self._pieces[token_id] = piece
        return piece

    def token_text(self, token_id: int) -> str:
        """A special token's own text (the chat template's bos_token), "" for none."""
        return (
            self.piece(token_id, special=True).decode("utf-8", "replace") if token_id >= 0 else ""
        )
