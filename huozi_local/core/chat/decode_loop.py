"""Evaluating a prompt against llama.cpp's KV cache, then sampling until something stops it.

One loop for every kind of reply (a chat turn, a raw completion), so that stop ids, stop strings,
whole-character streaming, the token budget, cancel and the timing figures cannot drift apart
between them. The caller holds the engine's lock for as long as this generator runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from huozi_local.core.chat.detokenize import StopText, Utf8Stream
from huozi_local.core.chat.types import (
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
    StopReason,
    TextDelta,
)

if TYPE_CHECKING:
    from llama_cpp import Llama


def decode_reply(
    llm: Llama,
    prompt: list[int],
    options: SamplingOptions,
    cancel: threading.Event | None,
    *,
    stop_ids: frozenset[int],
    stop_texts: Sequence[str],
    piece: Callable[[int], bytes],
    seed: int | None,
    model: str,
    started: float,
    dropped_messages: int = 0,
    on_finished: Callable[[str, list[int]], None] | None = None,
) -> Iterator[ReplyEvent]:
    """TextDelta events (whole characters), then ReplyResult.

    `started` is when the caller began working on the request, so time-to-first-token includes
    what it did before (fitting a conversation, tokenizing). `on_finished` gets the reply's text
    and the exact ids generated for it, before ReplyResult is yielded.
    """
    n_ctx = int(llm.n_ctx())
    evaluated = evaluate_prompt(llm, prompt, cancel)
    budget = min(options.max_tokens, n_ctx - len(prompt))
    stop_ids = stop_ids | frozenset(options.stop_token_ids)
    decoder = Utf8Stream(piece)
    stop_text = StopText(stop_texts)
    parts: list[str] = []
    ids: list[int] = []
    reason: StopReason = "length"
    first_token_at: float | None = None
    if seed is not None:
        llm.set_seed(seed)
    tokens = (
        llm.generate(
            prompt,
            top_k=options.top_k,
            top_p=options.top_p,
            min_p=options.min_p,
            temp=options.temperature,
            repeat_penalty=options.repeat_penalty,
        )
        if evaluated is not None and budget > 0
        else iter(())
    )
    if evaluated is None:
        reason = "cancelled"
    for token in tokens:
        if first_token_at is None:
            first_token_at = time.perf_counter()
        if token in stop_ids:
            reason = "stop"
            break
        ids.append(token)
        text, stopped = stop_text.push(decoder.feed(token))
        if text:
            parts.append(text)
            yield TextDelta(text)
        if stopped:
            reason = "stop"
            break
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        if len(ids) >= budget:
            break
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
    ttft = (first_token_at or finished) - started
    decode_s = finished - (first_token_at or finished)
    rate = (len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else 0.0
    yield ReplyResult(
        text=text,
        stop_reason=reason,
        prompt_tokens=len(prompt),
        evaluated_prompt_tokens=evaluated or 0,
        completion_tokens=len(ids),
        ttft_s=ttft,
        tokens_per_s=rate,
        model=model,
        dropped_messages=dropped_messages,
    )


def evaluate_prompt(llm: Llama, prompt: list[int], cancel: threading.Event | None) -> int | None:
    """Evaluate all but the last prompt token, reusing the cached prefix; None if cancelled.

    `Llama.generate` then finds every token but the last cached and evaluates just that one,
    so the count returned here is exactly what this reply evaluated. Feeding the batches
    here, not inside `generate`, lets a cancel stop a long prompt between batches.
    """
    import numpy as np

    limit = min(llm.n_tokens, len(prompt) - 1)
    differs = np.flatnonzero(llm.input_ids[:limit] != np.asarray(prompt[:limit]))
    common = int(differs[0]) if differs.size else limit
    llm.n_tokens = common
    batch = max(1, llm.n_batch)
    for start in range(common, len(prompt) - 1, batch):
        if cancel is not None and cancel.is_set():
            return None
        llm.eval(prompt[start : min(len(prompt) - 1, start + batch)])
    return len(prompt) - common
