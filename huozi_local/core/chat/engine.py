"""One loaded model answering a conversation: the `ChatBackend` every front end drives.

Thread-safety: one reply at a time. `stream_reply` and `stream_completion` hold the engine's lock
from their first event to their last (or until the caller closes the generator); a second caller
blocks until then. Both run the one decode loop in `decode_loop`. Token
counting (`prompt_tokens`, `count_tokens`) does not take the lock. Cancel a reply from any thread by
setting its `cancel` event; generation stops before the next token.

KV-cache reuse: the engine's `KvSession` records the tokens in llama.cpp's KV cache and keeps
their longest common prefix with the next prompt. Re-tokenizing a reply's text does not always
give back the ids the model generated, so the engine remembers the exact ids of the replies it
produced (keyed by their text) and puts them back when a reply returns in the history: turn N then
evaluates only what was added since turn N-1. When old turns are dropped to fit the context, the
prefix after the system message changes and the rest is evaluated again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from huozi_local.core import huozi
from huozi_local.core.chat.context_window import fit_to_context
from huozi_local.core.chat.decode_loop import decode_reply
from huozi_local.core.chat.growing_context import ContextGrowth
from huozi_local.core.chat.kv_session import KvSession
from huozi_local.core.chat.loader import LoadOptions, check_model_file, load_llama, padded_n_ctx
from huozi_local.core.chat.prompt_cache import PromptCache
from huozi_local.core.chat.sampler_chain import ReusedChain
from huozi_local.core.chat.template import (
    Segment,
    huozi_segments,
    render_jinja_segments,
)
from huozi_local.core.chat.types import (
    ChatMessage,
    ContextTrimmed,
    Notice,
    ReplyEvent,
    SamplingOptions,
)
from huozi_local.core.chat.vocabulary import Vocabulary
from huozi_local.core.devices.threadpool import CpuThreadpools
from huozi_local.core.errors import HuoziError
from huozi_local.core.gguf.header import GGUFFile
from huozi_local.core.progress import ProgressCallback

if TYPE_CHECKING:
    from huozi_local.core.chat.llama_model import HuoziLlama

log = logging.getLogger(__name__)
REPLY_CACHE_SIZE = 256


class LlamaEngine:
    """A GGUF model loaded through llama-cpp-python, speaking the huozi format or its own.

    The engine answers exactly the messages it is given: a system message is the caller's to
    include (the conversation owns it, whichever backend answers).
    """

    def __init__(
        self,
        llm: HuoziLlama,
        path: Path,
        gguf: GGUFFile,
        *,
        seed: int | None = None,
        capacity: int | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self._llm = llm
        self._path = path
        self._gguf = gguf
        self._is_huozi = gguf.is_huozi
        self._seed = seed
        self._lock = threading.Lock()
        self._replies: OrderedDict[str, list[int]] = OrderedDict()
        self._words = Vocabulary(llm, gguf)
        self._tokenizer = self._words.tokenizer
        self._stop_ids = self._words.stop_ids
        self._add_bos = self._words.add_bos
        self._bos_id = self._words.bos_id
        self._growth = ContextGrowth(llm)
        self._session = KvSession(
            llm.context, llm.guard, capacity=padded_n_ctx(capacity or 0), grow=self._growth
        )
        self._growth.session = self._session
        self._growth.threadpools = CpuThreadpools.attach(llm.context)
        self._chains = ReusedChain(self._words.n_vocab)
        self._cache = prompt_cache
        if prompt_cache is not None:  # replies of earlier runs, to rebuild their prompts exactly
            self.remember_replies(prompt_cache.replies.items())

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model: str | Path | GGUFFile,
        options: LoadOptions | None = None,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        capacity: int | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> LlamaEngine:
        """Check the file's header, then load it (HuoziError in one line when it cannot be).

        `model`: a path, or the header a caller already read (a load parses the file once).
        `capacity`: the largest context a conversation may grow to (the context starts at
        `options.n_ctx` and doubles when it is full); `prompt_cache`: where states of earlier
        prompts are kept and restored from.
        """
        options = options or LoadOptions()
        if isinstance(model, GGUFFile):
            model_path, gguf = model.path, check_model_file(model.path, model)
        else:
            model_path = Path(model).expanduser()
            gguf = check_model_file(model_path)
        llm = load_llama(model_path, options, progress=progress, cancel=cancel)
        return cls(
            llm,
            model_path,
            gguf,
            seed=options.seed,
            capacity=capacity,
            prompt_cache=prompt_cache,
        )

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:  # the conversation open now, for the next run
                try:
                    self._cache.persist(self._session, self._replies)
                except HuoziError as exc:
                    log.warning("prompt cache: not saved at close: %s", exc)
                self._cache = None
            self._chains.close()
            self._session.close()
            self._llm.close()
            pools = self._growth.threadpools
            if pools is not None:  # after the context that used them is gone
                pools.close()
                self._growth.threadpools = None

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        """Decode with n_threads and evaluate prompts with n_threads_batch from now on.

        The only safe way to change them: the context's CPU threadpools must match the counts.
        """
        import llama_cpp

        with self._lock:
            self._growth.threads = (n_threads, n_threads_batch)  # a grown context keeps them
            pools = self._growth.threadpools
            if pools is None or not pools.set_threads(n_threads, n_threads_batch):
                llama_cpp.llama_set_n_threads(self._llm.ctx, n_threads, n_threads_batch)

    def clear_cache(self) -> None:
        """Forget the KV cache: the next reply evaluates its whole prompt (benchmarks, tests)."""
        with self._lock:
            self._session.clear()

    # -- properties -----------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self._gguf.name or self._path.stem

    @property
    def n_ctx(self) -> int:
        """The context a conversation may use: what llama.cpp allocated (it pads the requested
        size to 256), or the larger size it grows to when the conversation needs it."""
        return self._session.capacity

    @property
    def allocated_n_ctx(self) -> int:
        """The context llama.cpp holds memory for right now."""
        return self._session.n_ctx

    @property
    def growth_steps(self) -> int:
        """How often the context was made larger (diagnostics, benchmarks)."""
        return self._growth.steps

    @property
    def last_growth_seconds(self) -> float:
        return self._growth.last_seconds

    @property
    def prompt_cache(self) -> PromptCache | None:
        return self._cache

    @property
    def threadpools(self) -> CpuThreadpools | None:
        """The CPU threadpools attached to the context (diagnostics and tests)."""
        return self._growth.threadpools

    @property
    def is_huozi(self) -> bool:
        return self._is_huozi

    @property
    def path(self) -> Path:
        return self._path

    @property
    def llama(self) -> HuoziLlama:
        """The underlying llama-cpp-python object (benchmarks and diagnostics).

        Its tokenizer is safe to use. Its own `generate`/`eval` rewrite the KV cache behind the
        engine's record of it: call `clear_cache()` after using them.
        """
        return self._llm

    @property
    def stop_token_ids(self) -> frozenset[int]:
        return self._stop_ids

    # -- prompts --------------------------------------------------------------------------
    def segments(self, messages: Sequence[ChatMessage]) -> list[Segment]:
        """The prompt of `messages`, in the model's format."""
        full = list(messages)
        if self._is_huozi:
            return huozi_segments(full)
        template = self._gguf.chat_template
        if not template:
            raise HuoziError(f"{self._path.name} has no chat template and is not a huozi model")
        bos = self._words.token_text(self._bos_id)
        eos = self._words.token_text(self._words.eos_id)
        segments = render_jinja_segments(template, full, bos_token=bos, eos_token=eos)
        return segments

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of the prompt for `messages`, as `stream_reply` would evaluate them."""
        ids = self._tokenizer.segments_to_ids(self.segments(messages), self._replies.get)
        if not self._is_huozi and self._add_bos and (not ids or ids[0] != self._bos_id):
            ids.insert(0, self._bos_id)
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.fragment(text))

    def remember_replies(self, replies: Iterable[tuple[str, list[int]]]) -> None:
        """Use these exact ids for these reply texts when they come back in a history (replies
        generated in an earlier run, kept with its saved KV state)."""
        for text, ids in replies:
            self._remember_reply(text, list(ids))

    def _remember_reply(self, text: str, ids: list[int]) -> None:
        if not text:
            return
        self._replies[text] = ids
        self._replies.move_to_end(text)
        while len(self._replies) > REPLY_CACHE_SIZE:
            self._replies.popitem(last=False)

    # -- replies --------------------------------------------------------------------------
    def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        """TextDelta events (whole characters), maybe ContextTrimmed first, then ReplyResult.

        Raises HuoziError before the first event when even the last message cannot fit.
        """
        options = sampling or SamplingOptions()
        with self._lock:
            yield from self._reply_locked(list(messages), options, cancel)

    def _reply_locked(
        self,
        messages: list[ChatMessage],
        options: SamplingOptions,
        cancel: threading.Event | None,
    ) -> Iterator[ReplyEvent]:
        started = time.perf_counter()
        n_ctx = self.n_ctx
        fitted = fit_to_context(messages, self.prompt_tokens, n_ctx, options.max_tokens)
        if fitted.dropped_messages:
            yield ContextTrimmed(
                fitted.dropped_messages,
                f"the conversation is longer than the model's context ({n_ctx} tokens): "
                f"the oldest {fitted.dropped_messages} messages were left out of the prompt",
            )
        yield from self._decode_locked(
            fitted.tokens,
            options,
            cancel,
            started=started,
            dropped_messages=fitted.dropped_messages,
            on_finished=self._remember_exact_reply,
        )

    def stream_completion(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
        *,
        parse_special: bool = True,
        add_bos: bool = True,
    ) -> Iterator[ReplyEvent]:
        """Continue `prompt` verbatim (no template, no system message): TextDelta, then ReplyResult.

        Special tokens written in the prompt are parsed by default, as vLLM does for
        /v1/completions: a raw prompt is the caller's own template text, so `<s>` or
        `<|beginofutterance|>` must become one token, not the letters (llama.cpp parses
        USER_DEFINED tokens, as huozi's utterance markers are in the official files, either way).
        `add_bos` adds BOS only when the model's vocabulary asks for one. Stops exactly as
        `stream_reply` does: the same decode loop, under the same lock. Raises HuoziError before
        the first event when the prompt is empty or does not fit the context.
        """
        options = sampling or SamplingOptions()
        with self._lock:
            started = time.perf_counter()
            ids = self._llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=parse_special)
            if not ids:
                raise HuoziError("the prompt is empty: give the model some text to continue")
            if len(ids) >= self.n_ctx:
                raise HuoziError(
                    f"the prompt is {len(ids)} tokens, the model's context is {self.n_ctx}: "
                    "shorten it"
                )
            # not remembered: the reply cache is for chat replies coming back in a history
            yield from self._decode_locked(ids, options, cancel, started=started)

    def _decode_locked(
        self,
        prompt: list[int],
        options: SamplingOptions,
        cancel: threading.Event | None,
        *,
        started: float,
        dropped_messages: int = 0,
        on_finished: Callable[[str, list[int]], None] | None = None,
    ) -> Iterator[ReplyEvent]:
        stop_texts = (huozi.END_OF_UTTERANCE, *options.stop) if self._is_huozi else options.stop
        restored = 0
        if self._cache is not None:
            restored = self._cache.prepare(self._session, prompt, self._replies)
            for text in self._cache.take_notices():
                yield Notice(text)
        yield from decode_reply(
            self._session,
            prompt,
            options,
            cancel,
            restored=restored,
            sampler=self._chains.get(
                options, options.seed if options.seed is not None else self._seed
            ),
            stop_ids=self._stop_ids,
            stop_texts=stop_texts,
            piece=self._words.reply_piece,
            model=self.model_name,
            started=started,
            dropped_messages=dropped_messages,
            on_finished=on_finished,
        )

    def last_logits(self) -> list[float]:
        """The logits llama.cpp computed last: after a reply of one token, those of the
        prompt's last token (tests compare a restored cache with an evaluated one by them)."""
        import llama_cpp

        with self._lock:
            row = llama_cpp.llama_get_logits_ith(self._session.context, -1)
            return [float(row[i]) for i in range(self._words.n_vocab)]

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens llama.cpp's KV cache holds now, in order (diagnostics and tests)."""
        return self._session.cached_tokens()

    def _remember_exact_reply(self, text: str, ids: list[int]) -> None:
        if b"".join(map(self._words.reply_piece, ids)).decode("utf-8", "replace") == text:
            self._remember_reply(text, ids)  # not after a stop string: the ids hold more
