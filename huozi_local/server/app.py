"""The OpenAI-compatible HTTP API over one `ChatBackend` (the engine), as a Starlette app.

A small ASGI app rather than llama-cpp-python's server extra: that server formats prompts itself
and would bypass the engine's huozi template, its stop at 57001, its KV-cache reuse and its context
policy. Here every request goes through the same `stream_reply` the terminal chat and the TUI use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from huozi_local.core.chat.template import with_system_prompt
from huozi_local.core.chat.types import (
    ChatBackend,
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
    TextDelta,
)
from huozi_local.core.errors import HuoziError
from huozi_local.server import openai_format as fmt
from huozi_local.server.guard import DEFAULT_MAX_BODY_BYTES, HostPolicy, RequestGuard
from huozi_local.server.queue import GenerationQueue, ServerShuttingDown
from huozi_local.server.schemas import (
    APIError,
    decode_json_object,
    error_body,
    parse_chat_request,
    parse_completion_request,
)

CompleteFn = Callable[[str, SamplingOptions, threading.Event | None], Iterator[ReplyEvent]]
Produce = Callable[[threading.Event], Iterator[ReplyEvent]]
CANCELLED = "the reply was cancelled: the server is stopping"


@dataclass
class ServedModel:
    """What the server answers with: a chat backend and, when it has one, a raw-prompt path."""

    backend: ChatBackend
    model_id: str
    complete: CompleteFn | None = None
    system_prompt: str = ""
    """Sent first when a request's messages carry no system message ("" for none)."""


def create_app(
    served: ServedModel,
    *,
    api_key: str | None = None,
    defaults: SamplingOptions | None = None,
    on_shutdown: Callable[[], None] | None = None,
    bind_host: str = "127.0.0.1",
    cors_origins: Sequence[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """Build the app; `app.state.generation_queue` is exposed so a signal handler can cancel it.

    `bind_host` decides which Host headers a server without `api_key` answers (see `guard`);
    CORS headers are sent
    only for `cors_origins` (none by default: no web page may read the answers)."""
    generation = GenerationQueue()
    api = _Api(served, generation, api_key, defaults or SamplingOptions())

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(generation.close)
            if on_shutdown is not None:
                on_shutdown()

    app = Starlette(
        routes=[
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
            Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/health", api.health, methods=["GET"]),
        ],
        exception_handlers={
            HTTPException: _http_error,
            APIError: _api_error,
            ClientDisconnect: _client_gone,
        },
        lifespan=lifespan,
        middleware=_middleware(bind_host, cors_origins, max_body_bytes, keyed=bool(api_key)),
    )
    app.state.generation_queue = generation
    return app


def _middleware(
    bind_host: str, cors_origins: Sequence[str], max_body_bytes: int, *, keyed: bool
) -> list[Middleware]:
    """The guard, then CORS when origins were given. With an API key the Host check is off: a
    rebinding page cannot use a server that wants a key it does not have, and other machines
    reach a keyed server by whatever name they know it by (`--endpoint http://gpu-box:8000`)."""
    guard = Middleware(
        RequestGuard,
        hosts=None if keyed else HostPolicy(bind_host),
        max_body_bytes=max_body_bytes,
    )
    if not cors_origins:
        return [guard]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
    )
    return [guard, cors]


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    message = f"{exc.detail}: {_request.method} {_request.url.path}"
    return JSONResponse(error_body(message, "invalid_request_error", None, code), exc.status_code)


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), exc.status)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    """The client hung up, or was cut off at its body deadline, before its body arrived: the
    answer goes nowhere, and it is no server error to log with a traceback."""
    gone = APIError(499, "client closed the request", code="client_closed")
    return JSONResponse(gone.body(), gone.status)


def _engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, ServerShuttingDown):
        return APIError(503, str(exc), error_type="server_error", code="shutting_down")
    if isinstance(exc, HuoziError):
        return APIError(400, str(exc))
    # The type and message, never repr(): a repr can carry internals (paths, object ids, bytes).
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return APIError(500, f"generation failed ({detail})", error_type="server_error")


class _Api:
    def __init__(
        self,
        served: ServedModel,
        generation: GenerationQueue,
        api_key: str | None,
        defaults: SamplingOptions,
    ) -> None:
        self.served = served
        self.generation = generation
        self.api_key = api_key
        self.defaults = defaults
        self.created = fmt.now()

    def _authorize(self, request: Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise APIError(
                401,
                "Incorrect API key provided: pass it as 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.served.model_id})

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        body = fmt.model_list(self.served.model_id, self.created, self.served.backend.n_ctx)
        return JSONResponse(body)

    async def model(self, request: Request) -> Response:
        self._authorize(request)
        wanted = request.path_params["model_id"]
        entry = fmt.model_list(self.served.model_id, self.created, self.served.backend.n_ctx)
        if wanted != self.served.model_id:
            message = (
                f"The model '{wanted}' does not exist (this server runs {entry['data'][0]['id']})"
            )
            raise APIError(404, message, param="model", code="model_not_found")
        return JSONResponse(entry["data"][0])

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        chat = parse_chat_request(decode_json_object(await request.body()), self.defaults)
        backend = self.served.backend

        def produce(cancel: threading.Event) -> Iterator[ReplyEvent]:
            messages = with_system_prompt(chat.messages, self.served.system_prompt)
            return backend.stream_reply(messages, chat.sampling, cancel)

        if chat.stream:
            stream = self._stream(produce, chat.n, chat.include_usage, chat=True)
            return _sse_response(stream)
        replies = [await self._collect(request, produce) for _ in range(chat.n)]
        body = fmt.chat_completion(fmt.new_id("chatcmpl"), fmt.now(), self.served.model_id, replies)
        return JSONResponse(body)

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        completion = parse_completion_request(
            decode_json_object(await request.body()), self.defaults
        )
        complete = self.served.complete
        if complete is None:
            raise APIError(
                404, "this server's backend has no raw-prompt completions", code="unsupported"
            )

        def produce(cancel: threading.Event) -> Iterator[ReplyEvent]:
            return complete(completion.prompt, completion.sampling, cancel)

        prefix = completion.prompt if completion.echo else ""
        if completion.stream:
            stream = self._stream(
                produce, completion.n, completion.include_usage, chat=False, prefix=prefix
            )
            return _sse_response(stream)
        replies = [await self._collect(request, produce) for _ in range(completion.n)]
        replies = [(prefix + text, result) for text, result in replies]
        body = fmt.text_completion(fmt.new_id("cmpl"), fmt.now(), self.served.model_id, replies)
        return JSONResponse(body)

    async def _collect(self, request: Request, produce: Produce) -> tuple[str, ReplyResult]:
        """Run one reply to the end; a client that hangs up meanwhile (even while its request
        still waits in line) cancels it."""

        async def consume() -> tuple[str, ReplyResult | None]:
            parts: list[str] = []
            result: ReplyResult | None = None
            events = self.generation.events(produce)
            try:
                async for event in events:
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                    elif isinstance(event, ReplyResult):
                        result = event
            finally:
                await events.aclose()
            return "".join(parts), result

        work = asyncio.ensure_future(consume())
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise APIError(499, "client closed the request", code="client_closed")
        try:
            text, result = work.result()
        except Exception as exc:
            raise _engine_error(exc) from exc
        if result is None or result.stop_reason == "cancelled":
            raise _engine_error(ServerShuttingDown(CANCELLED))
        return text, result

    async def _stream(
        self, produce: Produce, n: int, include_usage: bool, *, chat: bool, prefix: str = ""
    ) -> AsyncIterator[bytes]:
        chunk_id = fmt.new_id("chatcmpl" if chat else "cmpl")
        created = fmt.now()
        model = self.served.model_id
        results: list[ReplyResult] = []

        def piece(index: int, text: str, reason: str | None = None) -> bytes:
            if chat:
                delta = {"content": text} if text else {}
                return fmt.sse(fmt.chat_chunk(chunk_id, created, model, index, delta, reason))
            return fmt.sse(fmt.text_chunk(chunk_id, created, model, index, text, reason))

        for index in range(n):
            if chat:
                role = {"role": "assistant", "content": ""}
                yield fmt.sse(fmt.chat_chunk(chunk_id, created, model, index, role))
            elif prefix:
                yield piece(index, prefix)
            events = self.generation.events(produce)
            try:
                async for event in events:
                    if isinstance(event, TextDelta) and event.text:
                        yield piece(index, event.text)
                    elif isinstance(event, ReplyResult):
                        if event.stop_reason == "cancelled":
                            raise ServerShuttingDown(
                                "the reply was cancelled: the server is stopping"
                            )
                        results.append(event)
                        yield piece(index, "", fmt.finish_reason(event))
            except Exception as exc:
                # Headers are gone already: OpenAI clients raise on an `error` event.
                yield fmt.sse(_engine_error(exc).body())
                return
            finally:
                await events.aclose()
        if include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield fmt.sse(fmt.usage_chunk(chunk_id, created, model, obj, results))
        yield fmt.SSE_DONE


def _sse_response(stream: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message: dict[str, Any] = dict(await request.receive())
        if message.get("type") == "http.disconnect":
            return
