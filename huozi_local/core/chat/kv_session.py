"""llama.cpp's context driven directly: one reused batch and our own record of the KV cache.

`Llama.generate` costs a reply 0.5-0.7 ms a token in Python (its `input_ids`/`scores` arrays, a
sampler wrapper, a batch refilled element by element), which on a small or fast model is a third
of the time. Here the context is fed through llama.cpp's C API: one `llama_batch` allocated once
and filled with `memmove`, `llama_decode`, and a plain list saying which token sits at each
position of the cache. That list is what makes exact-prefix reuse work: a new prompt keeps the
longest prefix it shares with it, the rest is removed from the cache, and only the new tokens are
evaluated. The record is sized by what llama.cpp really allocated, never by what was requested.

Not thread-safe: the engine's lock serializes every use.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from huozi_local.core.errors import HuoziError

Guard = Callable[..., Any]  # guard(function, *args) -> function(*args)
Grow = Callable[[int], None]  # grow(tokens_needed): give the session a larger context
WAIT_AVERAGING = 0.2  # weight of the newest token in the moving averages of the two waits

_DECODE_ERRORS = {
    1: "no room left in the KV cache",
    2: "the evaluation was aborted",
    -1: "the batch was invalid",
}


class KvSession:
    """Sequence 0 of one llama.cpp context: what it holds, and how to add to it.

    `guard`, when given, runs each call that waits on the devices, `guard(function, *args)`:
    decoding, and reading, writing or clearing the KV cache (on an RPC worker those are
    transfers). It is the model's `run_guarded`: with RPC workers a lost worker must become
    `WorkerLost`, not a hang; without one, calls go direct.

    The context may be smaller than the conversation may grow (`capacity`): when the tokens
    would not fit, `grow` is asked for a larger one, which it installs with `rebind` (the
    cached tokens carried over through `save_state`/`load_state`).
    """

    def __init__(
        self,
        ctx: Any,
        guard: Guard | None = None,
        *,
        capacity: int | None = None,
        grow: Grow | None = None,
    ) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._guard = guard
        self._grow = grow
        self._bind(ctx)
        self.capacity = max(self.n_ctx, capacity or 0)
        """The most tokens this session may hold: its context now, or what `grow` reaches."""
        self.n_batch = max(1, int(llama_cpp.llama_n_batch(ctx)))
        batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._batch: Any = batch
        self._token = batch.token
        self._pos = batch.pos
        self._logits = batch.logits
        for i in range(self.n_batch):  # every token belongs to sequence 0, once and for all
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
        self._tokens: list[int] = []
        # how long llama_decode and sampling take, as moving averages (see `decode_returns_early`)
        self._push_s = 0.0
        self._sample_s = 0.0

    def _bind(self, ctx: Any) -> None:
        self._ctx = ctx
        self._memory = self._lib.llama_get_memory(ctx)
        self.n_ctx = int(self._lib.llama_n_ctx(ctx))

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None

    # -- moving the sequence: to a file, to a larger context ------------------------------------
    def save_state(self) -> bytearray:
        """Sequence 0's KV cache as llama.cpp serialises it (positions, K and V per layer).

        Copied into one Python-owned buffer: restoring it, into this context or a larger one
        of the same model and KV settings, gives back exactly the same cache.
        """
        size = int(self._lib.llama_state_seq_get_size(self._ctx, 0))
        state = bytearray(size)
        if size:
            view = (ctypes.c_uint8 * size).from_buffer(state)
            written = int(self._call(self._lib.llama_state_seq_get_data, self._ctx, view, size, 0))
            del view
            if written != size:
                raise HuoziError(f"llama.cpp saved {written} of {size} bytes of the KV cache")
        return state

    def load_state(self, state: bytearray | memoryview, tokens: Sequence[int]) -> bool:
        """Replace what the cache holds with `state`, which holds `tokens`; False (the cache
        left empty) when llama.cpp refuses it (another model's, too large, damaged)."""
        self.clear()
        if len(tokens) > self.n_ctx and self._grow is not None and len(tokens) <= self.capacity:
            self._grow(len(tokens))
        if not len(state) or len(tokens) > self.n_ctx:
            return False
        view = (ctypes.c_uint8 * len(state)).from_buffer(state)
        read = int(self._call(self._lib.llama_state_seq_set_data, self._ctx, view, len(state), 0))
        del view
        if read != len(state) or self._cached_positions() != len(tokens):
            self.clear()
            return False
        self._tokens = list(tokens)
        return True

    def _cached_positions(self) -> int:
        """How many positions sequence 0 holds, as llama.cpp counts them."""
        highest = int(self._lib.llama_memory_seq_pos_max(self._memory, 0))
        return highest + 1 if highest >= 0 else 0

    def rebind(self, ctx: Any) -> None:
        """Use `ctx` from now on (a larger context of the same model); it starts empty."""
        self._bind(ctx)
        self._tokens = []

    @property
    def guard(self) -> Guard | None:
        return self._guard

    @property
    def context(self) -> Any:
        """The `llama_context *` this session feeds (samplers read its logits)."""
        return self._ctx

    # -- what the cache holds -------------------------------------------------------------
    @property
    def n_cached(self) -> int:
        return len(self._tokens)

    def cached_tokens(self) -> list[int]:
        """A copy of the tokens the KV cache holds, position by position."""
        return list(self._tokens)

    def clear(self) -> None:
        """Forget everything (the next prompt is evaluated in full)."""
        self._call(self._lib.llama_memory_clear, self._memory, True)
        self._tokens.clear()

    def reusable_prefix(self, prompt: Sequence[int]) -> int:
        """How many tokens of `prompt` the cache could keep (never the whole prompt)."""
        return common_prefix(self._tokens, prompt, min(len(self._tokens), len(prompt) - 1))

    def keep_prefix_of(self, prompt: Sequence[int]) -> int:
        """Keep the longest cached prefix of `prompt`, drop the rest; return how many were kept.

        The whole prompt is never kept: its last token is evaluated again so that there are
        logits to sample from. The cache is cut at the kept length even when the record ends
        there, so a token the cache got but the record missed (an interrupt right after a
        decode) cannot linger.
        """
        common = self.reusable_prefix(prompt)
        if not self._lib.llama_memory_seq_rm(self._memory, 0, common, -1):
            self._lib.llama_memory_clear(self._memory, True)  # a cache that cannot be cut
            common = 0
        del self._tokens[common:]
        return common

    # -- adding to it ---------------------------------------------------------------------
    def evaluate(self, tokens: Sequence[int], cancel: threading.Event | None = None) -> bool:
        """Append `tokens` in `n_batch` chunks, logits for the last one only.

        Returns False, with the chunks so far kept, when `cancel` is set between chunks.
        """
        self.make_room(self.n_cached + len(tokens))
        if self.n_cached + len(tokens) > self.n_ctx:
            raise HuoziError(
                f"{self.n_cached + len(tokens)} tokens do not fit the context ({self.n_ctx})"
            )
        for start in range(0, len(tokens), self.n_batch):
            if cancel is not None and cancel.is_set():
                return False
            chunk = tokens[start : start + self.n_batch]
            last = start + self.n_batch >= len(tokens)
            self._fill(chunk, with_logits=last)
            self._decode(chunk)
        return True

    def make_room(self, n_tokens: int) -> None:
        """Grow the context (when it can) so that it holds `n_tokens` in all."""
        if n_tokens > self.n_ctx and self._grow is not None and self.n_ctx < self.capacity:
            self._grow(min(n_tokens, self.capacity))

    def push(self, token: int) -> None:
        """Append one generated token (the per-token step: four stores and one C call)."""
        if len(self._tokens) >= self.n_ctx:
            self.make_room(len(self._tokens) + 1)
        self._token[0] = token
        self._pos[0] = len(self._tokens)
        self._logits[0] = 1
        self._batch.n_tokens = 1
        rc = self._run_decode()
        if rc != 0:
            self._fail(rc)
        self._tokens.append(token)

    # -- which of the two waits is the long one ---------------------------------------------
    def note_waits(self, push_s: float, sample_s: float) -> None:
        """Record how long one token's `push` and the next sample took."""
        self._push_s += (push_s - self._push_s) * WAIT_AVERAGING
        self._sample_s += (sample_s - self._sample_s) * WAIT_AVERAGING

    @property
    def decode_returns_early(self) -> bool:
        """Does llama_decode return before the work is done (a GPU, an RPC worker)?

        On the CPU it computes before returning and sampling is quick; on a GPU or an RPC
        worker it only queues the work, and sampling waits for it. Measured, not configured: a
        split model is whichever its timings say. False until there are timings.
        """
        return self._push_s < self._sample_s

    def _fill(self, chunk: Sequence[int], *, with_logits: bool) -> None:
        # numpy converts a 512-token list five times faster than a ctypes array constructor
        n = len(chunk)
        start = len(self._tokens)
        tokens = np.asarray(chunk, dtype=np.int32)
        positions = np.arange(start, start + n, dtype=np.int32)
        ctypes.memmove(self._token, tokens.ctypes.data, 4 * n)
        ctypes.memmove(self._pos, positions.ctypes.data, 4 * n)
        ctypes.memset(self._logits, 0, n)
        self._logits[n - 1] = 1 if with_logits else 0
        self._batch.n_tokens = n

    def _run_decode(self) -> int:
        return int(self._call(self._lib.llama_decode, self._ctx, self._batch))

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """A call that may wait on the devices (decoding, the KV state's bytes), guarded."""
        if self._guard is None:
            return function(*args)
        return self._guard(function, *args)

    def _decode(self, chunk: Sequence[int]) -> None:
        rc = self._run_decode()
        if rc != 0:
            self._fail(rc)
        self._tokens.extend(chunk)

    def _fail(self, rc: int) -> None:
        # after a failed decode part of the batch may be in the cache: start clean next time
        self.clear()
        reason = _DECODE_ERRORS.get(rc, "a fatal error")
        raise HuoziError(f"llama.cpp could not evaluate the tokens: {reason} (code {rc})")


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of a[:limit] and b[:limit] (slice compares run in C)."""
    if list(a[:limit]) == list(b[:limit]):
        return limit
    low, high = 0, limit  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if list(a[low:middle]) == list(b[low:middle]):
            low = middle
        else:
            high = middle
    return low
