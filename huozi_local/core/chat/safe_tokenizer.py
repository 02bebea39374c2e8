"""Prompt tokens where special tokens come only from the template, never from what people typed.

llama.cpp parses CONTROL tokens only when asked to (special=True), but it parses USER_DEFINED
tokens in any text. The official huozi files mark `<|endofutterance|>` USER_DEFINED, so a user who
types that string would end their own turn. This module tokenizes the template's special tokens by
id and every raw run of text with special parsing off; when a run still yields a token that is not
an ordinary piece (NORMAL, BYTE, UNKNOWN), the run is tokenized again around the special string so
those characters become ordinary pieces. That holds for any file, repaired or not.

llama.cpp's SentencePiece tokenizer prefixes a space ('▁') to every raw fragment that starts the
text or follows a special token. A fragment is therefore tokenized in one call, exactly as the
whole prompt would be; a piece that continues a fragment is tokenized behind an anchor ('\\n', a
byte token that merges with nothing) whose tokens are then removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from huozi_local.core.chat.template import RawText, Segment, Special, TemplateText

TokenizeFn = Callable[[bytes, bool], list[int]]  # (utf-8 text, parse_special) -> ids, no BOS

_ANCHOR = "\n"


class SafeTokenizer:
    """Tokenizes prompt segments for one vocabulary.

    `unsafe_ids`: ids that must never come from user text (CONTROL, USER_DEFINED, ...).
    `special_texts`: the strings llama.cpp would parse as those tokens.
    `byte_ids`: byte value -> byte-fallback token id, the last resort for a one-character
    special string.
    """

    def __init__(
        self,
        tokenize: TokenizeFn,
        unsafe_ids: frozenset[int],
        special_texts: Sequence[str],
        byte_ids: dict[int, int] | None = None,
    ) -> None:
        self._tokenize = tokenize
        self.unsafe_ids = unsafe_ids
        texts = sorted({t for t in special_texts if t}, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(t) for t in texts)) if texts else None
        self._byte_ids = byte_ids or {}
        self._anchor_ids = tokenize(_ANCHOR.encode(), False)

    # -- prompts --------------------------------------------------------------------------
    def segments_to_ids(
        self,
        segments: Sequence[Segment],
        reply_ids: Callable[[str], list[int] | None] = lambda _text: None,
    ) -> list[int]:
        """Token ids of a rendered prompt; `reply_ids` may give back a reply's generated ids."""
        out: list[int] = []
        run: list[str] = []  # raw text of the fragment being built
        at_start = True  # does the pending run start a fragment (after BOS/special/nothing)?

        def flush() -> None:
            nonlocal at_start
            if run:
                out.extend(self.fragment("".join(run), at_start=at_start))
                run.clear()
                at_start = False

        for segment in segments:
            if isinstance(segment, Special):
                flush()
                out.append(segment.token_id)
                at_start = True
            elif isinstance(segment, RawText):
                run.append(segment.text)
            elif isinstance(segment, TemplateText):
                for special_id, text in self._split_template(segment.text):
                    if special_id is None:
                        run.append(text)
                    else:
                        flush()
                        out.append(special_id)
                        at_start = True
            else:
                cached = reply_ids(segment.content)
                if cached is None:
                    run.append(segment.head + segment.content)
                else:
                    run.append(segment.head)
                    flush()
                    out.extend(cached)
                    at_start = False
        flush()
        return out

    def _split_template(self, text: str) -> list[tuple[int | None, str]]:
        """Template text cut into raw runs and the special tokens llama.cpp would parse in it."""
        if self._special_re is None or not text:
            return [(None, text)]
        parts: list[tuple[int | None, str]] = []
        pos = 0
        for match in self._special_re.finditer(text):
            if match.start() > pos:
                parts.append((None, text[pos : match.start()]))
            ids = self._tokenize(match.group().encode(), True)
            if len(ids) == 1 and ids[0] in self.unsafe_ids:
                parts.append((ids[0], match.group()))
            else:
                parts.append((None, match.group()))
            pos = match.end()
        if pos < len(text):
            parts.append((None, text[pos:]))
        return parts

    # -- raw text -------------------------------------------------------------------------
    def fragment(self, text: str, *, at_start: bool = True) -> list[int]:
        """Ids of raw text, special parsing off, guaranteed free of `unsafe_ids`."""
        if not text:
            return []
        ids = self._tokenize(text.encode(), False) if at_start else self._continuation(text)
        if self.unsafe_ids.isdisjoint(ids):
            return ids
        return self._split_around_specials(text, at_start)

    def _continuation(self, text: str) -> list[int]:
        ids = self._tokenize((_ANCHOR + text).encode(), False)
        n = len(self._anchor_ids)
        if ids[:n] == self._anchor_ids:
            return ids[n:]
        return self._tokenize(text.encode(), False)  # pragma: no cover - no such vocab seen

    def _split_around_specials(self, text: str, at_start: bool) -> list[int]:
        match = self._special_re.search(text) if self._special_re else None
        if match is None:
            return self._halves(text, at_start)
        out = self.fragment(text[: match.start()], at_start=at_start)
        first_at_start = at_start and match.start() == 0
        out += self._halves(match.group(), first_at_start)
        out += self.fragment(text[match.end() :], at_start=False)
        return out

    def _halves(self, text: str, at_start: bool) -> list[int]:
        """Tokenize text in two parts, so no part holds a whole special string."""
        if len(text) == 1:
            ids = self._tokenize(text.encode(), False) if at_start else self._continuation(text)
            raw = text.encode()
            if self.unsafe_ids.isdisjoint(ids) or not all(b in self._byte_ids for b in raw):
                return ids
            return [self._byte_ids[b] for b in raw]
        middle = len(text) // 2
        return self.fragment(text[:middle], at_start=at_start) + self.fragment(
            text[middle:], at_start=False
        )
