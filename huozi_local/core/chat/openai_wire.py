"""The OpenAI chat API as it arrives from a server we do not control: bytes in, typed values out.

Everything an `--endpoint` server sends passes through here before anything else reads it, so a
server that sends `choices: 5`, a string for `delta`, bytes that are not UTF-8, an HTML login page
or JSON nested a hundred thousand deep meets one explicit check and one line
(`RemoteProtocolError`, naming the server and the field), instead of a TypeError deep in the chat
loop, a silently empty reply, or a complaint about the user's own input. The `openai` client
would not help: it builds its response objects without validating them (`choices: 5` comes back
as `5`).

Only the fields the backend uses are checked; anything else a server adds is its own business
(bounded by the size and depth limits, which apply to the whole document).
"""

from __future__ import annotations

import html
import json
import re
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from huozi_local.core.errors import RemoteError, RemoteProtocolError

MAX_EVENT_BYTES = 1 << 20
"""One server-sent event. A token's delta is tens of bytes, a few KiB with logprobs; a megabyte is
a server gone wrong, and reading on would grow one line without bound."""
MAX_BODY_BYTES = 8 << 20
"""A models list: servers that list hundreds of models with descriptions stay far below this."""
MAX_ERROR_BYTES = 64 << 10
"""An error answer: only its first line or title is shown."""
MAX_DEPTH = 32
"""JSON nesting. An OpenAI chunk nests about 7 deep (tool calls, logprobs); Python's parser
recurses and dies with RecursionError somewhere near 1000."""
MAX_TOKEN_COUNT = 1 << 31
MAX_ID_CHARS = 1024
MAX_SHOWN_CHARS = 200


@dataclass(frozen=True)
class ModelEntry:
    """One model of a `GET /models` answer."""

    id: str
    owned_by: str | None
    n_ctx: int
    """The context the server says it runs the model with; 0 when it does not say."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class Chunk:
    """What one `chat.completion.chunk` says about the first choice (the only one asked for)."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class LineReader(Protocol):
    """What the stream parser needs of an HTTP response: `http.client.HTTPResponse`."""

    def readline(self, limit: int = -1, /) -> bytes: ...


def protocol_error(server: str, problem: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"{server} {problem}", server=server)


# -- JSON documents ------------------------------------------------------------------------------

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of a JSON text nest more than `limit` levels: checked
    before parsing, because the parser recurses once per level."""
    if text.count("[") + text.count("{") <= limit:
        return False  # too few brackets to nest that deep: no scan
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def loads(text: str, server: str, what: str) -> object:
    """`text` parsed as JSON, or one line saying what `server` sent instead (`what`: 'a chunk')."""
    if nests_deeper_than(text, MAX_DEPTH):
        raise protocol_error(server, f"sent {what} nested deeper than {MAX_DEPTH} levels")
    try:
        value: object = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        problem = f"sent {what} that is not JSON ({_short(str(exc), 80)})"
        raise protocol_error(server, problem) from None
    return value


def decode(raw: bytes, server: str, what: str) -> str:
    """The UTF-8 text of bytes the server sent: bytes that are not UTF-8 are the server's fault,
    and must never reach the places that report undecodable input as the user's."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1]
        raise protocol_error(
            server, f"sent bytes that are not UTF-8 in {what} ({bad!r} at byte {exc.start})"
        ) from None


def looks_like_html(content_type: str, text: str) -> bool:
    return (
        media_type(content_type) in ("text/html", "application/xhtml+xml")
        or text.lstrip()[:1] == "<"
    )


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def describe_html(text: str) -> str:
    """'an HTML page (502 Bad Gateway)': a proxy's error page or a login form says what it is in
    its title, which is all of it worth a line."""
    found = _TITLE.search(text)
    title = one_line(html.unescape(found.group(1))) if found else ""
    return f"an HTML page ({title})" if title else "an HTML page"


def one_line(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """Server text fit for an error line: its lines joined with ' / ', control characters (a
    terminal's escape sequences included) made spaces, and at most `limit` characters."""
    lines = (line.strip() for line in text.splitlines())
    joined = " / ".join(line for line in lines if line)
    cleaned = "".join(" " if unicodedata.category(c) == "Cc" else c for c in joined)
    return _short(" ".join(cleaned.split()), limit)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reported_error(data: object) -> str | None:
    """The message of an error the server reports in JSON (`{"error": {"message": ...}}`, a bare
    `{"error": "..."}`, FastAPI's `{"detail": ...}`), in one line; None when there is none."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        return one_line(str(message if message is not None else error))
    if error is not None:
        return one_line(str(error))
    if data.get("detail") is not None:
        return one_line(str(data["detail"]))
    return None


def error_detail(raw: bytes, content_type: str) -> str:
    """How an HTTP error answer continues its line: ': the message', ' with an HTML page (…)',
    or '' for an empty body. Error bodies are shown, not trusted: anything goes, nothing fails."""
    text = raw.decode("utf-8", "replace").replace("\ufffd", "")
    if not text.strip():
        return ""
    if looks_like_html(content_type, text):
        return f" with {describe_html(text)}"
    message = None
    if not nests_deeper_than(text, MAX_DEPTH):
        try:
            message = reported_error(json.loads(text))
        except ValueError:
            pass
    return f": {message or one_line(text)}"


# -- typed values --------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


@dataclass(frozen=True)
class _Document:
    """One JSON document from the server, read field by field: a field of the wrong type or out
    of range is named by its path ("sent a chunk whose 'choices[0].delta' is a string")."""

    server: str
    what: str

    def wrong(self, path: str, problem: str) -> RemoteProtocolError:
        return protocol_error(self.server, f"sent {self.what} whose '{path}' {problem}")

    def root(self, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise protocol_error(self.server, f"sent {self.what} that is {_kind(value)}")
        return value

    def mapping(self, value: object, path: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.wrong(path, f"is {_kind(value)}")
        return value

    def optional_object(self, value: object, path: str) -> dict[str, object]:
        return {} if value is None else self.mapping(value, path)

    def optional_list(self, value: object, path: str) -> list[object]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.wrong(path, f"is {_kind(value)}")
        return value

    def optional_text(self, value: object, path: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.wrong(path, f"is {_kind(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, from a `\\ud83d` escape
            raise self.wrong(path, f"is not valid Unicode ({value[exc.start]!r})") from None
        return value

    def optional_count(self, value: object, path: str) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.wrong(path, f"is {_kind(value)}")
        if not 0 <= value < MAX_TOKEN_COUNT:
            raise self.wrong(path, f"is {_short(str(value), 24)}")
        return value


def parse_models(value: object, server: str) -> list[ModelEntry]:
    """The models a `GET /models` answer lists, in its order."""
    doc = _Document(server, "a models list")
    entries = []
    for index, item in enumerate(doc.optional_list(doc.root(value).get("data"), "data")):
        path = f"data[{index}]"
        entry = doc.mapping(item, path)
        model_id = doc.optional_text(entry.get("id"), f"{path}.id")
        if not model_id:
            raise doc.wrong(f"{path}.id", "is missing" if model_id is None else "is empty")
        if len(model_id) > MAX_ID_CHARS:
            raise doc.wrong(f"{path}.id", f"is longer than {MAX_ID_CHARS} characters")
        if any(unicodedata.category(c) == "Cc" for c in model_id):
            raise doc.wrong(f"{path}.id", "has control characters")
        owned_by = doc.optional_text(entry.get("owned_by"), f"{path}.owned_by")
        entries.append(ModelEntry(model_id, owned_by, _context_size(entry)))
    return entries


def _context_size(entry: dict[str, object]) -> int:
    """`n_ctx` (ours), `max_model_len` (vLLM) or `meta.n_ctx_train` (llama-server): extensions,
    so a value that is not a sane count is ignored rather than refused (the caller guesses)."""
    meta = entry.get("meta")
    candidates = [entry.get("n_ctx"), entry.get("max_model_len")]
    if isinstance(meta, dict):
        candidates.append(meta.get("n_ctx_train"))
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_TOKEN_COUNT:
            return value
    return 0


def parse_chunk(value: object, server: str) -> Chunk:
    """One streamed `chat.completion.chunk`; an error the server reports in the stream raises
    `RemoteError` with its message."""
    doc = _Document(server, "a chunk")
    data = doc.root(value)
    reported = reported_error({"error": data["error"]}) if data.get("error") is not None else None
    if reported:
        raise RemoteError(f"{server} reported an error: {reported}", server=server)
    text: list[str] = []
    finish: str | None = None
    for index, item in enumerate(doc.optional_list(data.get("choices"), "choices")):
        path = f"choices[{index}]"
        choice = doc.mapping(item, path)
        if doc.optional_count(choice.get("index"), f"{path}.index") not in (None, 0):
            continue  # only one choice is asked for
        delta = doc.optional_object(choice.get("delta"), f"{path}.delta")
        text.append(doc.optional_text(delta.get("content"), f"{path}.delta.content") or "")
        finish = doc.optional_text(choice.get("finish_reason"), f"{path}.finish_reason") or finish
    usage = None
    if data.get("usage") is not None:
        counts = doc.mapping(data["usage"], "usage")
        usage = Usage(
            doc.optional_count(counts.get("prompt_tokens"), "usage.prompt_tokens"),
            doc.optional_count(counts.get("completion_tokens"), "usage.completion_tokens"),
        )
    return Chunk("".join(text), finish, usage)


# -- the event stream ----------------------------------------------------------------------------


def event_data(response: LineReader, server: str, cancel: threading.Event) -> Iterator[str]:
    """The data of each server-sent event, as text, until the stream ends or `cancel` is set;
    every line is read with a bound, so no event can grow past MAX_EVENT_BYTES."""
    lines: list[str] = []
    size = 0
    while not cancel.is_set():
        raw = response.readline(MAX_EVENT_BYTES + 1)
        if not raw:
            if lines:  # the last event, cut short of its blank line: judged as it is
                yield "\n".join(lines)
            return
        size += len(raw)
        if size > MAX_EVENT_BYTES:
            raise protocol_error(server, f"sent an event larger than {MAX_EVENT_BYTES >> 20} MiB")
        line = decode(raw, server, "its reply stream").rstrip("\r\n")
        if line.startswith("data:"):
            lines.append(line[6:] if line.startswith("data: ") else line[5:])
        elif not line and lines:
            yield "\n".join(lines)
            lines, size = [], 0
        elif not lines:
            size = 0  # comments, `event:` lines and keep-alives between events add up to nothing


def chunks(response: LineReader, server: str, cancel: threading.Event) -> Iterator[Chunk]:
    """The typed chunks of a reply stream, up to `data: [DONE]`.

    A stream that stops before a finish_reason and without [DONE] lost the end of the reply (a
    crashed server, a proxy's timeout): that is said, rather than showing a cut reply as whole.
    A reply that finished but lacks [DONE] is whole, and accepted.
    """
    finished = False
    for data in event_data(response, server, cancel):
        if data == "[DONE]":
            return
        chunk = parse_chunk(loads(data, server, "a chunk"), server)
        finished = finished or chunk.finish_reason is not None
        yield chunk
    if not finished and not cancel.is_set():
        raise RemoteError(
            f"{server} ended the reply's stream before it finished (no finish_reason, no [DONE])",
            server=server,
        )
