"""The raw-prompt completion path behind /v1/completions.

It exists because /v1/completions means "continue this text": no template, no system message.
The engine's `stream_completion` does the work (special tokens in the prompt parsed, as vLLM does,
since a raw prompt is how clients write the huozi format themselves), through the same decode loop
and lock as chat replies. A backend without it (a remote one) gets no /v1/completions route
rather than a second, drifting copy of that loop here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from huozi_local.core.chat.types import ReplyEvent, SamplingOptions

CompleteFn = Callable[[str, SamplingOptions, threading.Event | None], Iterator[ReplyEvent]]


@runtime_checkable
class RawCompletionBackend(Protocol):
    def stream_completion(
        self,
        prompt: str,
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]: ...


def raw_completer(backend: object) -> CompleteFn | None:
    """The backend's raw-prompt completion, or None when it has none (the route then says so)."""
    if isinstance(backend, RawCompletionBackend):
        return backend.stream_completion
    return None
