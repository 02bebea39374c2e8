"""What the `--endpoint` backend does with a server that does not keep to the OpenAI API: every
malformed answer is one line that names the server and what was wrong, never a traceback, a
silent empty reply, or a message that blames the user's own input.

The server is scripted (tests/api_server.py): it sends exactly the bytes each case gives, over a
real socket, to the real backend and the real `huozi-local chat --endpoint` in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_server import (
    A_GOOD_REPLY,
    Canned,
    chunk,
    event_stream,
    json_answer,
    models_answer,
    scripted_server,
)

from huozi_local.core import errors
from huozi_local.core.chat.remote_backend import RemoteBackend
from huozi_local.core.chat.types import ChatMessage, collect_reply
from huozi_local.core.errors import HuoziError

DEEP = 100_000
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>\n</body></html>\n"


def _delta(**delta: object) -> dict[str, object]:
    return chunk(choices=[{"index": 0, "delta": delta, "finish_reason": None}])


@dataclass(frozen=True)
class Case:
    name: str
    says: str
    """What the one line must contain, after the server's URL."""
    chat: Canned = A_GOOD_REPLY
    models: Canned | None = None


CASES = [
    # -- the reply stream -------------------------------------------------------------------
    Case(
        "choices a number",
        "sent a chunk whose 'choices' is a number",
        event_stream(chunk(choices=5)),
    ),
    Case(
        "a choice a string", "whose 'choices[0]' is a string", event_stream(chunk(choices=["hi"]))
    ),
    Case(
        "delta a string",
        "whose 'choices[0].delta' is a string",
        event_stream(chunk(choices=[{"index": 0, "delta": "hi"}])),
    ),
    Case(
        "content a number",
        "whose 'choices[0].delta.content' is a number",
        event_stream(_delta(content=5)),
    ),
    Case(
        "finish_reason a list",
        "whose 'choices[0].finish_reason' is a list",
        event_stream(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": ["stop"]}])),
    ),
    Case(
        "usage with strings",
        "whose 'usage.prompt_tokens' is a string",
        event_stream(chunk(usage={"prompt_tokens": "many", "completion_tokens": "2"})),
    ),
    Case(
        "usage negative",
        "whose 'usage.completion_tokens' is -3",
        event_stream(chunk(usage={"prompt_tokens": 1, "completion_tokens": -3})),
    ),
    Case(
        "a chunk that is a list", "sent a chunk that is a list", event_stream(b"data: [1, 2]\n\n")
    ),
    Case(
        "deeply nested JSON",
        "nested deeper than",
        event_stream(b"data: " + b"[" * DEEP + b"]" * DEEP + b"\n\n"),
    ),
    Case("not JSON", "sent a chunk that is not JSON", event_stream(b"data: {oops\n\n")),
    Case(
        "a number too long to read",
        "sent a chunk that is not JSON",
        event_stream(b'data: {"usage": {"prompt_tokens": 1' + b"0" * 5000 + b"}}\n\n"),
    ),
    Case(
        "bytes that are not UTF-8",
        "sent bytes that are not UTF-8",
        event_stream(b'data: {"choices": [{"index": 0, "delta": {"content": "\xff"}}]}\n\n'),
    ),
    Case(
        "a lone surrogate",
        "whose 'choices[0].delta.content' is not valid Unicode",
        event_stream(b'data: {"choices": [{"index": 0, "delta": {"content": "\\ud83d"}}]}\n\n'),
    ),
    Case(
        "a chunk too large",
        "sent an event larger than",
        event_stream(_delta(content="x" * (2 << 20))),
    ),
    Case(
        "a stream cut short",
        "ended the reply's stream before it finished",
        event_stream(_delta(content="你好"), done=False),
    ),
    Case(
        "an empty stream",
        "ended the reply's stream before it finished",
        Canned(b"", content_type="text/event-stream"),
    ),
    Case(
        "HTML with status 200",
        "answered with an HTML page (Sign in)",
        Canned(HTML_PAGE, content_type="text/html; charset=utf-8"),
    ),
    Case(
        "one JSON object, not a stream",
        "answered with application/json, not an event stream",
        json_answer({"choices": [{"index": 0, "message": {"content": "hi"}}]}),
    ),
    Case(
        "an error reported in the stream, over two lines",
        "the model crashed / see the log",
        event_stream({"error": {"message": "the model crashed\nsee the log"}}),
    ),
    # -- error answers ------------------------------------------------------------------------
    Case(
        "a 502 page from a proxy",
        "answered 502 with an HTML page (502 Bad Gateway)",
        Canned(
            b"<html><head><title>502 Bad Gateway</title></head></html>",
            status=502,
            content_type="text/html",
        ),
    ),
    Case("a 500 with a blank body", "answered 500", Canned(b"\n\n", status=500)),
    Case(
        "a 500 whose detail has lines",
        "answered 500: first / second",
        json_answer({"detail": "first\nsecond"}, status=500),
    ),
    # -- the models list ------------------------------------------------------------------------
    Case(
        "models 'data' a number",
        "sent a models list whose 'data' is a number",
        models=json_answer({"data": 5}),
    ),
    Case(
        "a model id an object",
        "sent a models list whose 'data[0].id' is an object",
        models=json_answer({"data": [{"id": {"name": "m"}}]}),
    ),
    Case(
        "a model id with a line break",
        "sent a models list whose 'data[0].id' has control characters",
        models=json_answer({"data": [{"id": "huozi\nfake"}]}),
    ),
    Case(
        "models as HTML",
        "answered GET /models with an HTML page (Sign in)",
        models=Canned(HTML_PAGE, content_type="text/html"),
    ),
    Case(
        "models not UTF-8",
        "sent bytes that are not UTF-8",
        models=Canned(b'{"data": [{"id": "\xff"}]}'),
    ),
    Case(
        "models deeply nested",
        "nested deeper than",
        models=Canned(b'{"data": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ),
    Case(
        "a models list too large",
        "sent a models list larger than",
        models=models_answer(*(f"model-{i:07d}-" + "x" * 200 for i in range(50_000))),
    ),
]


def _ids(case: Case) -> str:
    return case.name


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_the_backend_names_the_server_and_what_it_sent(case: Case) -> None:
    with scripted_server(case.chat, case.models) as url:
        remote = RemoteBackend(url)
        with pytest.raises(HuoziError) as caught:
            collect_reply(remote.stream_reply([ChatMessage("user", "你好")]))
    message = str(caught.value)
    assert message.startswith(url + " "), message
    assert case.says in message and "\n" not in message
    assert "your" not in message and "input" not in message


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_chat_endpoint_prints_one_line_and_exits_2(case: Case, huozi_home: Path) -> None:
    with scripted_server(case.chat, case.models) as url:
        done = subprocess.run(
            [sys.executable, "-m", "huozi_local", "chat", "--endpoint", url],
            input="你好\n",
            capture_output=True,
            text=True,
            env={**os.environ, "HUOZI_HOME": str(huozi_home)},
            timeout=120,
        )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"huozi-local: {url}") and case.says in lines[0]
    assert "input" not in lines[0] and "Traceback" not in done.stderr


def test_a_well_formed_reply_still_streams_with_its_usage() -> None:
    with scripted_server() as url:
        result = collect_reply(RemoteBackend(url).stream_reply([ChatMessage("user", "你好")]))
    assert (result.text, result.stop_reason) == ("你好！", "stop")
    assert (result.prompt_tokens, result.completion_tokens) == (5, 2)


def test_a_finished_reply_without_done_is_whole() -> None:
    """[DONE] only says no more events come; a reply whose finish_reason arrived is complete."""
    finished = chunk(choices=[{"index": 0, "delta": {"content": "好"}, "finish_reason": "length"}])
    with scripted_server(event_stream(finished, done=False)) as url:
        result = collect_reply(RemoteBackend(url).stream_reply([ChatMessage("user", "你好")]))
    assert (result.text, result.stop_reason, result.completion_tokens) == ("好", "length", 1)


STALLING = Canned(
    event_stream(_delta(content="你"), done=False).body,
    content_type="text/event-stream",
    stall=True,
)


@pytest.mark.parametrize(
    ("answer", "when"),
    [
        (Canned(silent=True), "after the request"),
        (STALLING, "in the middle of the reply"),
    ],
    ids=["before the headers", "in the middle of the stream"],
)
def test_a_server_that_goes_quiet_times_out_with_one_line(answer: Canned, when: str) -> None:
    """The socket's read timeout (600 s by default) covers every read; the line says when."""
    with scripted_server(answer) as url:
        remote = RemoteBackend(url, timeout=1.0)
        with pytest.raises(HuoziError) as caught:
            collect_reply(remote.stream_reply([ChatMessage("user", "你好")]))
    assert str(caught.value) == f"{url} sent nothing for 1 s {when}"


def test_the_protocol_error_is_worded_by_both_front_ends() -> None:
    from huozi_local.commands._remedies import cli_wording
    from huozi_local.tui.remedies import app_wording

    line = "http://h:8000/v1 sent a chunk whose 'choices' is a number"
    error = errors.RemoteProtocolError(line, server="http://h:8000/v1")
    assert isinstance(error, errors.RemoteError) and error.server == "http://h:8000/v1"
    assert cli_wording(error).startswith(line + ": ")
    assert "--endpoint" in cli_wording(error)
    assert cli_wording(error) != app_wording(error) and "--" not in app_wording(error)


def test_in_a_terminal_chat_a_failed_reply_is_one_line_and_the_chat_goes_on(
    huozi_home: Path,
) -> None:
    """A person at `chat --endpoint` loses one reply to a malformed chunk, not the chat: the
    line names the server, the prompt comes back, and /regen gets the reply the server now
    sends properly. (Piped input still ends with status 2: see the test above.)"""
    broken = event_stream(chunk(choices=5))
    leader, follower = os.openpty()  # stdin a terminal: the chat is interactive
    try:
        os.write(leader, "你好\n/regen\n/quit\n".encode())
        with scripted_server([broken, A_GOOD_REPLY]) as url:
            done = subprocess.run(
                [sys.executable, "-m", "huozi_local", "chat", "--endpoint", url],
                stdin=follower,
                capture_output=True,
                text=True,
                env={**os.environ, "HUOZI_HOME": str(huozi_home)},
                timeout=120,
            )
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"huozi-local: {url} sent a chunk whose 'choices' is a number: ")
    assert lines[0].endswith("(/regen asks again)")
    assert "你好！" in done.stdout and done.stdout.count("用户> ") == 3
