"""Our OpenAI-compatible server, run for real on 127.0.0.1 in a background thread, over the real
engine; plus a tap that records every reply result the engine produced (to see cancellations
the client never gets to see)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from openai.types.chat import ChatCompletionMessageParam

from huozi_local.core.chat.types import (
    ChatBackend,
    ChatMessage,
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
)
from huozi_local.server.app import ServedModel, create_app
from huozi_local.server.connections import ConnectionLimits
from huozi_local.server.runner import base_url, bind_socket, make_server
from huozi_local.server.serving import raw_completer

GREEDY = SamplingOptions(temperature=0.0)


def huozi_roles(*messages: dict[str, str]) -> list[ChatCompletionMessageParam]:
    """Messages in huozi's own roles (用户/助手/系统): the server takes them, OpenAI's types do not
    list them, so the client library is told they are ordinary messages."""
    return cast("list[ChatCompletionMessageParam]", list(messages))


@dataclass
class RecordingBackend:
    """Passes everything to the real backend; keeps each finished reply's result."""

    inner: ChatBackend
    results: list[ReplyResult] = field(default_factory=list)
    conversations: list[list[ChatMessage]] = field(default_factory=list)
    finished: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def n_ctx(self) -> int:
        return self.inner.n_ctx

    def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        self.conversations.append(list(messages))
        for event in self.inner.stream_reply(messages, sampling, cancel):
            if isinstance(event, ReplyResult):
                self.results.append(event)
                self.finished.release()
            yield event

    def close(self) -> None:
        self.inner.close()


@dataclass
class RunningServer:
    url: str
    backend: RecordingBackend
    model_id: str


@contextmanager
def running_server(
    engine: ChatBackend,
    *,
    model_id: str = "huozi3-tiny",
    api_key: str | None = None,
    limits: ConnectionLimits | None = None,
    **app_options: Any,
) -> Iterator[RunningServer]:
    """Greedy by default, so replies to unrigged prompts are repeatable too. `app_options` go
    to `create_app` (CORS origins, the body limit), but `system_prompt`: the served default;
    `limits` (timeouts, the connection cap) to the runner."""
    system_prompt = app_options.pop("system_prompt", "")
    recording = RecordingBackend(engine)
    served = ServedModel(recording, model_id, raw_completer(engine), system_prompt)
    app = create_app(served, api_key=api_key, defaults=GREEDY, **app_options)
    server = make_server(app, log_level="warning", limits=limits)
    sock = bind_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        yield RunningServer(base_url(sock), recording, model_id)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
