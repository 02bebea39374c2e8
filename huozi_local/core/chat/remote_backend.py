"""A `ChatBackend` that talks to any OpenAI-compatible server: `huozi-local serve` on another
machine, a vLLM deployment of huozi (the model README's setup), llama-server.

Standard library only (http.client): the app must not depend on the `openai` package, and the core
must not depend on the server extra. Everything the server sends is read through `openai_wire`,
which turns it into typed values or one line naming the server and what it got wrong. What the
request carries depends on who answers:

- a huozi model (its id says so, or the server is ours): the README's vLLM fields
  (`stop_token_ids: [57001]`, `repetition_penalty`) and the Chinese roles 系统/用户/助手, because
  vLLM applies huozi's own chat template, which writes the role names verbatim into the prompt;
- anything else: plain OpenAI fields and roles, since the OpenAI API rejects unknown fields.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from huozi_local.core import huozi
from huozi_local.core.chat import openai_wire as wire
from huozi_local.core.chat.types import (
    HUOZI_ROLE_NAMES,
    ChatMessage,
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
    StopReason,
    TextDelta,
)
from huozi_local.core.errors import (
    HuoziError,
    RemoteError,
    RemoteProtocolError,
    connection_failure_reason,
)

OUR_OWNER = "huozi-local"
FALLBACK_N_CTX = 4096


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int
    base_path: str  # e.g. "/v1"
    display: str


def parse_endpoint(url: str) -> _Endpoint:
    """`http://host:8000`, `http://host:8000/v1/` and `host:8000` all mean the same API root."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HuoziError(f"not an http(s) endpoint URL: {url!r} (e.g. http://127.0.0.1:8000/v1)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise HuoziError(f"bad port in endpoint URL {url!r}") from exc
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    display = f"{parts.scheme}://{parts.netloc}{path}"
    return _Endpoint(parts.scheme, parts.hostname, port, path, display)


class RemoteBackend:
    """An OpenAI-compatible endpoint as a chat backend (streaming, stop reasons, usage).

    It sends exactly the messages it is given: the conversation owns the system prompt, so a
    prompt changed in the app's settings reaches the server with the next reply.
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str | None = None,
        model: str | None = None,
        *,
        timeout: float = 600.0,
    ) -> None:
        self._endpoint = parse_endpoint(endpoint)
        self._api_key = api_key or None
        self._requested_model = model
        self._timeout = timeout
        self._model: str | None = None
        self._n_ctx = FALLBACK_N_CTX
        self._ours = False

    # -- ChatBackend -------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        self.connect()
        assert self._model is not None
        return self._model

    @property
    def n_ctx(self) -> int:
        """The server's context when it says (ours, vLLM, llama-server); else a modest guess."""
        self.connect()
        return self._n_ctx

    def close(self) -> None:
        """Nothing is held between replies (one connection per reply); here for parity with the
        engine, which front ends close when they finish."""

    @property
    def endpoint(self) -> str:
        return self._endpoint.display

    @property
    def speaks_huozi(self) -> bool:
        """Whether requests carry the huozi fields and roles (see the module docstring)."""
        self.connect()
        return self._ours or "huozi" in (self._model or "").lower()

    def connect(self) -> None:
        """Ask the server which models it serves (once); fails with one line when it cannot."""
        if self._model is not None:
            return
        entries = wire.parse_models(self._models_list(), self.endpoint)
        if not entries:
            raise RemoteError(
                f"{self.endpoint} serves no models (GET /models listed none)", server=self.endpoint
            )
        ids = [e.id for e in entries]
        if self._requested_model is not None and self._requested_model not in ids:
            raise RemoteError(
                f"{self.endpoint} has no model '{self._requested_model}' "
                f"(it serves: {wire.one_line(', '.join(ids))})",
                server=self.endpoint,
            )
        chosen = next(e for e in entries if self._requested_model in (None, e.id))
        self._model = chosen.id
        self._ours = chosen.owned_by == OUR_OWNER
        self._n_ctx = chosen.n_ctx or FALLBACK_N_CTX

    def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        self.connect()
        sampling = sampling or SamplingOptions()
        payload = self._chat_payload(messages, sampling)
        started = time.perf_counter()
        first_token_at: float | None = None
        parts: list[str] = []
        chunks = 0
        finish: str | None = None
        usage: wire.Usage | None = None
        cancel = cancel or threading.Event()
        connection, response = self._open("POST", "/chat/completions", payload)
        done = threading.Event()
        watcher = threading.Thread(
            target=_hang_up_on_cancel, args=(connection, cancel, done), daemon=True
        )
        watcher.start()
        try:
            self._expect_event_stream(response)
            for chunk in wire.chunks(response, self.endpoint, cancel):
                usage = chunk.usage or usage
                if chunk.text:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    chunks += 1
                    parts.append(chunk.text)
                    yield TextDelta(chunk.text)
                finish = chunk.finish_reason or finish
        except (OSError, http.client.HTTPException) as exc:
            if not cancel.is_set():
                raise self._broken(exc, "in the middle of the reply") from exc
        finally:
            done.set()
            connection.close()
        yield self._result(parts, finish, usage, chunks, cancel.is_set(), started, first_token_at)

    # -- internals ---------------------------------------------------------------------------

    def _chat_payload(
        self, messages: Sequence[ChatMessage], sampling: SamplingOptions
    ) -> dict[str, Any]:
        huozi_fields = self.speaks_huozi
        roles = HUOZI_ROLE_NAMES if huozi_fields else {r: r for r in HUOZI_ROLE_NAMES}
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": roles[m.role], "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if huozi_fields:
            stop_ids = dict.fromkeys((huozi.END_OF_UTTERANCE_ID, *sampling.stop_token_ids))
            payload["stop_token_ids"] = list(stop_ids)
            payload["repetition_penalty"] = sampling.repeat_penalty
        return payload

    def _result(
        self,
        parts: list[str],
        finish: str | None,
        usage: wire.Usage | None,
        chunks: int,
        cancelled: bool,
        started: float,
        first_token_at: float | None,
    ) -> ReplyResult:
        ended = time.perf_counter()
        stop_reason: StopReason = "cancelled" if cancelled else "stop"
        if not cancelled and finish == "length":
            stop_reason = "length"
        completion_tokens = (usage and usage.completion_tokens) or chunks
        prompt_tokens = (usage and usage.prompt_tokens) or 0
        generating = ended - (first_token_at or ended)
        return ReplyResult(
            text="".join(parts),
            stop_reason=stop_reason,
            prompt_tokens=prompt_tokens,
            evaluated_prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=(first_token_at or ended) - started,
            tokens_per_s=(completion_tokens - 1) / generating if generating > 0 else 0.0,
            model=self._model or "",
            extra={"endpoint": self.endpoint, "usage_reported": usage is not None},
        )

    def _connection(self) -> http.client.HTTPConnection:
        ep = self._endpoint
        if ep.scheme == "https":
            context = ssl.create_default_context()
            return http.client.HTTPSConnection(
                ep.host, ep.port, timeout=self._timeout, context=context
            )
        return http.client.HTTPConnection(ep.host, ep.port, timeout=self._timeout)

    def _open(
        self, method: str, path: str, payload: dict[str, Any] | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; any failure becomes one line naming the endpoint and what to do."""
        headers = {"Accept": "application/json, text/event-stream"}
        body = None
        if payload is not None:
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        connection = self._connection()
        try:
            connection.request(method, self._endpoint.base_path + path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            reason = connection_failure_reason(exc)
            hint = " (is the server running?)" if reason == "connection refused" else ""
            raise RemoteError(
                f"cannot reach {self.endpoint}: {reason}{hint}", server=self.endpoint
            ) from exc
        try:
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._broken(exc, "after the request") from exc
        if response.status >= 400:
            try:
                raw = response.read(wire.MAX_ERROR_BYTES)
            except (OSError, http.client.HTTPException):
                raw = b""  # the status says enough
            finally:
                connection.close()
            detail = wire.error_detail(raw, response.getheader("Content-Type") or "")
            raise RemoteError(
                self._http_error_line(response.status, detail, path), server=self.endpoint
            )
        return connection, response

    def _models_list(self) -> object:
        """`GET /models` as JSON, read with a bound on its size."""
        connection, response = self._open("GET", "/models", None)
        try:
            raw = response.read(wire.MAX_BODY_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._broken(exc, "while sending its models list") from exc
        finally:
            connection.close()
        if len(raw) > wire.MAX_BODY_BYTES:
            raise wire.protocol_error(
                self.endpoint, f"sent a models list larger than {wire.MAX_BODY_BYTES >> 20} MiB"
            )
        content_type = response.getheader("Content-Type") or ""
        if wire.looks_like_html(content_type, raw[:1024].decode("utf-8", "replace")):
            page = wire.describe_html(raw.decode("utf-8", "replace"))
            raise wire.protocol_error(self.endpoint, f"answered GET /models with {page}")
        text = wire.decode(raw, self.endpoint, "a models list")
        return wire.loads(text, self.endpoint, "a models list")

    def _expect_event_stream(self, response: http.client.HTTPResponse) -> None:
        """A reply must come as `text/event-stream`; one JSON object (a server that ignores
        `stream: true`) or an HTML page (a proxy, a login) is said, not shown as an empty reply.
        A missing Content-Type is let through: the events themselves are checked."""
        content_type = response.getheader("Content-Type") or ""
        kind = wire.media_type(content_type)
        if not kind or kind == "text/event-stream":
            return
        text = response.read(wire.MAX_ERROR_BYTES).decode("utf-8", "replace")
        if wire.looks_like_html(content_type, text):
            raise wire.protocol_error(
                self.endpoint, f"answered with {wire.describe_html(text)}, not an event stream"
            )
        reported = None
        if kind == "application/json" and not wire.nests_deeper_than(text, wire.MAX_DEPTH):
            try:
                reported = wire.reported_error(json.loads(text))
            except ValueError:
                pass
        if reported:
            raise RemoteError(
                f"{self.endpoint} reported an error: {reported}", server=self.endpoint
            )
        raise wire.protocol_error(
            self.endpoint, f"answered with {wire.one_line(kind, 60)}, not an event stream"
        )

    def _broken(self, exc: BaseException, when: str) -> RemoteError:
        """One line for a connection that failed once the server had it: silent past the
        timeout, hung up, or not speaking HTTP at all."""
        server = self.endpoint
        if isinstance(exc, TimeoutError):
            return RemoteError(
                f"{server} sent nothing for {self._timeout:g} s {when}", server=server
            )
        if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
            return RemoteError(f"{server} hung up {when}", server=server)
        if isinstance(exc, http.client.HTTPException):
            problem = wire.one_line(f"{type(exc).__name__}: {exc}", 120)
            return RemoteProtocolError(
                f"{server} did not answer in HTTP {when} ({problem})", server=server
            )
        reason = connection_failure_reason(exc)
        return RemoteError(f"lost the connection to {server} {when}: {reason}", server=server)

    def _http_error_line(self, status: int, detail: str, path: str) -> str:
        if status == 401:
            return f"{self.endpoint} refused the API key (401){detail}; pass the right --api-key"
        if status == 404 and path == "/models":
            return f"{self.endpoint} has no OpenAI API here (404 on {path}); check the URL"
        if status == 404:
            return f"{self.endpoint} has no model '{self._model}' (404){detail}"
        return f"{self.endpoint} answered {status}{detail}"


def _hang_up_on_cancel(
    connection: http.client.HTTPConnection, cancel: threading.Event, done: threading.Event
) -> None:
    """Close the socket when the caller cancels, even while blocked waiting for the first token:
    the server sees the disconnect and stops generating."""
    while not done.is_set():
        if cancel.wait(0.05):
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return
