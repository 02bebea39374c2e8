"""Our OpenAI-compatible server, run for real on 127.0.0.1 in a background thread, over the real
engine; plus a tap that records every reply result the engine produced (to see cancellations
the client never gets to see). And a scripted server that sends whatever bytes a test gives it,
for the malformed answers a third-party server may send."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


# -- a scripted server: any bytes, any shape -----------------------------------------------------


@dataclass(frozen=True)
class Canned:
    """One HTTP answer, sent byte for byte (no Content-Length: the body ends when the connection
    closes, as a stream does). `silent`: accept the request and never answer; `stall`: send the
    body, then neither send more nor close."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "application/json"
    silent: bool = False
    stall: bool = False


def json_answer(value: Any, status: int = 200) -> Canned:
    return Canned(json.dumps(value, ensure_ascii=False).encode("utf-8"), status)


def models_answer(*ids: str) -> Canned:
    """A /v1/models answer as llama-server, vLLM or OpenAI give it."""
    return json_answer({"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})


def chunk(**fields: Any) -> dict[str, Any]:
    """A chat.completion.chunk with `fields` replacing its defaults (one choice, `delta`)."""
    base: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "delta": {"content": "你好"}, "finish_reason": None}],
    }
    return {**base, **fields}


def event_stream(*events: dict[str, Any] | bytes, done: bool = True) -> Canned:
    """An SSE answer: dicts are JSON events, bytes go out as they are (whole lines included)."""
    out = bytearray()
    for event in events:
        if isinstance(event, bytes):
            out += event
        else:
            out += b"data: " + json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n\n"
    if done:
        out += b"data: [DONE]\n\n"
    return Canned(bytes(out), content_type="text/event-stream")


A_GOOD_REPLY = event_stream(
    chunk(),
    chunk(choices=[{"index": 0, "delta": {"content": "！"}, "finish_reason": "stop"}]),
    chunk(choices=[], usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
)


@contextmanager
def scripted_server(
    chat: Canned | Sequence[Canned] = A_GOOD_REPLY, models: Canned | None = None
) -> Iterator[str]:
    """A server on 127.0.0.1 that answers GET /v1/models and POST /v1/chat/completions with
    exactly the bytes it is given, however wrong: the shapes no real server of ours would send.
    A sequence of `chat` answers is given in turn, the last one from then on. Yields the
    server's base URL (…/v1)."""
    replies = [chat] if isinstance(chat, Canned) else list(chat)
    answers = {"/v1/models": models or models_answer("scripted")}
    stopping = threading.Event()
    lock = threading.Lock()

    def next_reply() -> Canned:
        with lock:
            return replies.pop(0) if len(replies) > 1 else replies[0]

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            canned = next_reply() if self.path == "/v1/chat/completions" else answers.get(self.path)
            if canned is None:
                canned = Canned(b'{"error": {"message": "no such route"}}', status=404)
            if canned.silent:
                stopping.wait()
                return
            self.send_response(canned.status)
            if canned.content_type is not None:
                self.send_header("Content-Type", canned.content_type)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(canned.body)
            if canned.stall:
                self.wfile.flush()
                stopping.wait()

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(30)
