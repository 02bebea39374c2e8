"""Evaluating a prompt against llama.cpp's KV cache, then sampling until something stops it.

One loop for every kind of reply (a chat turn, a raw completion), so that stop ids, stop strings,
whole-character streaming, the token budget, cancel and the timing figures cannot drift apart
between them. The caller holds the engine's lock for as long as this generator runs.

Per token the loop does one `llama_sampler_sample` and one `llama_decode` through ctypes, plus the
text bookkeeping; the logits stay in C (see `kv_session` and `sampler_chain` for why).

A token is handed to the caller just before the longer of the two waits that follow it, so that
what the caller does with it (draw it, write it to a socket) overlaps the model's work. On the CPU
llama_decode computes before it returns and sampling is quick: the token goes out first, and a
caller in another thread (the app's screen, the server's event loop) takes the GIL while this one
waits in llama_decode without it. On a GPU or an RPC worker llama_decode only queues the work and
sampling waits for it: the next decode is queued first, and even a caller in this thread works
while the device computes. Which case holds is measured as the reply runs
(`KvSession.decode_returns_early`). Queuing first costs one decode nobody reads when a stop string
ends the reply; a stop id, the budget and a cancel are seen before either order pushes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from huozi_local.core.chat.detokenize import StopText, Utf8Stream
from huozi_local.core.chat.kv_session import KvSession
from huozi_local.core.chat.sampler_chain import SamplerChain
from huozi_local.core.chat.types import (
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
    StopReason,
    TextDelta,
)


def sampler_call(session: KvSession) -> Callable[[SamplerChain], int]:
    """`sample(chain)` on the session's context (read at each call: a growing context is a new
    one), under its guard when it has one."""
    guard = session.guard
    if guard is None:
        return lambda chain: chain.sample(session.context)
    return lambda chain: int(guard(chain.sample, session.context))


def _timed_push(session: KvSession, token: int) -> float:
    pushed_at = time.perf_counter()
    session.push(token)
    return time.perf_counter() - pushed_at


def decode_reply(
    session: KvSession,
    prompt: list[int],
    options: SamplingOptions,
    cancel: threading.Event | None,
    *,
    sampler: SamplerChain,
    stop_ids: frozenset[int],
    stop_texts: Sequence[str],
    piece: Callable[[int], bytes],
    model: str,
    started: float,
    dropped_messages: int = 0,
    on_finished: Callable[[str, list[int]], None] | None = None,
    restored: int = 0,
) -> Iterator[ReplyEvent]:
    """TextDelta events (whole characters), then ReplyResult.

    `sampler` is a chain as new, built with the reply's settings and seed (the caller owns it).
    `started` is when the caller began working on the request, so time-to-first-token includes
    what it did before (fitting a conversation, tokenizing). `on_finished` gets the reply's text
    and the exact ids generated for it, before ReplyResult is yielded. `restored`: how many
    tokens the prompt cache put back into the session just before (reported, not evaluated).
    """
    kept = session.keep_prefix_of(prompt)
    completed = session.evaluate(prompt[kept:], cancel)
    evaluated = len(prompt) - kept if completed else 0
    budget = min(options.max_tokens, session.capacity - len(prompt))
    stop_ids = stop_ids | frozenset(options.stop_token_ids)
    decoder = Utf8Stream(piece)
    stop_text = StopText(stop_texts)
    parts: list[str] = []
    ids: list[int] = []
    reason: StopReason = "length" if completed else "cancelled"
    sample = sampler_call(session)
    cancelled = cancel.is_set if cancel is not None else lambda: False
    token = sample(sampler) if completed and budget > 0 else None
    first_token_at = time.perf_counter()
    while token is not None:
        if token in stop_ids:
            reason = "stop"
            break
        ids.append(token)
        more = len(ids) < budget and not cancelled()
        queued_first = more and session.decode_returns_early
        if queued_first:  # a device computes the next logits while the caller has this token
            push_s = _timed_push(session, token)
        text, stopped = stop_text.push(decoder.feed(token))
        if text:
            parts.append(text)
            yield TextDelta(text)
        if stopped:
            reason = "stop"
            break
        if not more or cancelled():
            reason = "cancelled" if cancelled() else "length"
            break
        if not queued_first:
            push_s = _timed_push(session, token)
        sampled_at = time.perf_counter()
        token = sample(sampler)
        session.note_waits(push_s, time.perf_counter() - sampled_at)
    finished = time.perf_counter()
    tail = decoder.flush()
    held, stopped = stop_text.push(tail)
    tail_text = held if stopped else held + stop_text.flush()
    if tail_text:
        parts.append(tail_text)
        yield TextDelta(tail_text)
    text = "".join(parts)
    if on_finished is not None:
        on_finished(text, ids)
    ttft = first_token_at - started
    decode_s = finished - first_token_at
    rate = (len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else 0.0
    yield ReplyResult(
        text=text,
        stop_reason=reason,
        prompt_tokens=len(prompt),
        evaluated_prompt_tokens=evaluated,
        restored_prompt_tokens=min(restored, kept),
        completion_tokens=len(ids),
        ttft_s=ttft,
        tokens_per_s=rate,
        model=model,
        dropped_messages=dropped_messages,
    )
