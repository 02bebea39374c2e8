"""Response bodies in OpenAI's exact shapes, so every OpenAI client parses them unchanged.

Kept apart from the routes because the shapes are the contract (the `openai` package's models, the
README's Gradio page reading `chunk.choices[0].delta.content`), while the routes are plumbing.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from huozi_local.core.chat.types import ReplyResult


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; non-ASCII stays as UTF-8 so Chinese text is not six bytes a char."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


SSE_DONE = sse("[DONE]")


def finish_reason(result: ReplyResult) -> str:
    return "length" if result.stop_reason == "length" else "stop"


def usage(results: list[ReplyResult]) -> dict[str, int]:
    """OpenAI counts the prompt once and the completions of every choice."""
    prompt = results[0].prompt_tokens if results else 0
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_chunk(
    chunk_id: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, str],
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}],
    }


def usage_chunk(
    chunk_id: str, created: int, model: str, obj: str, results: list[ReplyResult]
) -> dict[str, Any]:
    """The extra last chunk `stream_options: {"include_usage": true}` asks for."""
    return {
        "id": chunk_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(results),
    }


def chat_completion(
    completion_id: str, created: int, model: str, replies: list[tuple[str, ReplyResult]]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason(result),
            }
            for index, (text, result) in enumerate(replies)
        ],
        "usage": usage([result for _, result in replies]),
    }


def text_chunk(
    chunk_id: str, created: int, model: str, index: int, text: str, reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}],
    }


def text_completion(
    completion_id: str, created: int, model: str, replies: list[tuple[str, ReplyResult]]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason(result),
            }
            for index, (text, result) in enumerate(replies)
        ],
        "usage": usage([result for _, result in replies]),
    }


def model_list(model_id: str, created: int, n_ctx: int) -> dict[str, Any]:
    """`owned_by: huozi-local` and `n_ctx` let our own RemoteBackend recognise this server."""
    return {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "huozi-local",
                "n_ctx": n_ctx,
            }
        ],
    }
