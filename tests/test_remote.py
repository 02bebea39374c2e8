"""RemoteBackend (the `--endpoint` backend of chat and the TUI) against our own server on
127.0.0.1, over the real engine and the tiny rigged models."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_server import GREEDY, RunningServer, running_server

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.remote_backend import RemoteBackend, parse_endpoint
from huozi_local.core.chat.types import (
    ChatBackend,
    ChatMessage,
    ReplyResult,
    SamplingOptions,
    TextDelta,
    collect_reply,
)
from huozi_local.core.errors import HuoziError

RIG_TEXT = "你好，龘世界！"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_engine(tiny_models) -> Iterator[LlamaEngine]:  # type: ignore[no-untyped-def]
    engine = LlamaEngine.load(tiny_models.get("merged", "q4_0", rig="chat"), LoadOptions(n_ctx=512))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def loop_engine(tiny_models) -> Iterator[LlamaEngine]:  # type: ignore[no-untyped-def]
    engine = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", rig="loop"), LoadOptions(n_ctx=1024)
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def chat_server(chat_engine: LlamaEngine) -> Iterator[RunningServer]:
    with running_server(chat_engine, model_id="huozi3:q4_0") as server:
        yield server


@pytest.fixture(scope="module")
def loop_server(loop_engine: LlamaEngine) -> Iterator[RunningServer]:
    with running_server(loop_engine) as server:
        yield server


def test_streams_a_reply_with_usage_and_history(chat_server: RunningServer) -> None:
    remote = RemoteBackend(chat_server.url)
    assert isinstance(remote, ChatBackend)
    assert remote.model_name == "huozi3:q4_0" and remote.n_ctx == 512 and remote.speaks_huozi
    history = [
        ChatMessage("user", "你好"),
        ChatMessage("assistant", RIG_TEXT),
        ChatMessage("user", "再说一遍"),
    ]
    events = list(remote.stream_reply(history, GREEDY))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    result = events[-1]
    assert isinstance(result, ReplyResult)
    assert len(deltas) > 1 and "".join(deltas) == result.text == RIG_TEXT
    assert result.stop_reason == "stop"
    served = chat_server.backend.results[-1]
    assert (result.prompt_tokens, result.completion_tokens) == (
        served.prompt_tokens,
        served.completion_tokens,
    )
    assert chat_server.backend.conversations[-1] == history


def test_the_remote_backend_sends_exactly_the_conversation_it_is_given(
    chat_server: RunningServer,
) -> None:
    """The conversation owns the system prompt: the backend adds none of its own (it used to add
    the one it was started with, so the app kept sending a prompt the user had removed)."""
    remote = RemoteBackend(chat_server.url)
    collect_reply(remote.stream_reply([ChatMessage("user", "hi")], GREEDY))
    assert chat_server.backend.conversations[-1] == [ChatMessage("user", "hi")]
    collect_reply(
        remote.stream_reply([ChatMessage("system", "mine"), ChatMessage("user", "hi")], GREEDY)
    )
    assert chat_server.backend.conversations[-1][0] == ChatMessage("system", "mine")


def test_length_stop(loop_server: RunningServer) -> None:
    remote = RemoteBackend(loop_server.url)
    sampling = SamplingOptions(temperature=0.0, max_tokens=3)
    result = collect_reply(remote.stream_reply([ChatMessage("user", "go")], sampling))
    assert (result.stop_reason, result.completion_tokens, result.text) == ("length", 3, "你好，")


def test_cancel_stops_the_remote_generation(loop_server: RunningServer) -> None:
    recorded = loop_server.backend
    while recorded.finished.acquire(blocking=False):
        pass
    remote = RemoteBackend(loop_server.url)
    cancel = threading.Event()
    sampling = SamplingOptions(temperature=0.0, max_tokens=900)
    seen = 0
    result: ReplyResult | None = None
    for event in remote.stream_reply([ChatMessage("user", "go")], sampling, cancel):
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                cancel.set()
        elif isinstance(event, ReplyResult):
            result = event
    assert result is not None and result.stop_reason == "cancelled"
    assert recorded.finished.acquire(timeout=120)
    assert recorded.results[-1].stop_reason == "cancelled"
    assert recorded.results[-1].completion_tokens < 900


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connection_refused_is_one_line() -> None:
    remote = RemoteBackend(f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(HuoziError) as caught:
        list(remote.stream_reply([ChatMessage("user", "hi")]))
    message = str(caught.value)
    assert "connection refused" in message and "\n" not in message


def test_wrong_api_key_unknown_model_and_wrong_path(chat_engine: LlamaEngine) -> None:
    with running_server(chat_engine, api_key="sekret") as server:
        with pytest.raises(HuoziError, match=r"refused the API key \(401\)"):
            RemoteBackend(server.url, api_key="nope").connect()
        with pytest.raises(HuoziError, match="has no model 'other'"):
            RemoteBackend(server.url, api_key="sekret", model="other").connect()
        root = server.url.removesuffix("/v1")
        with pytest.raises(HuoziError, match="has no OpenAI API here"):
            RemoteBackend(root + "/api", api_key="sekret").connect()
        remote = RemoteBackend(root, api_key="sekret")  # no /v1: it is added
        result = collect_reply(remote.stream_reply([ChatMessage("user", "hi")], GREEDY))
        assert result.text == RIG_TEXT


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:8000", "http://h:8000/v1"),
        ("http://h:8000/v1/", "http://h:8000/v1"),
        ("h:9", "http://h:9/v1"),
        ("https://x.org/api/v1", "https://x.org/api/v1"),
    ],
)
def test_endpoint_urls(url: str, expected: str) -> None:
    assert parse_endpoint(url).display == expected


@pytest.mark.parametrize("url", ["ftp://h/v1", "http://", "http://h:99999"])
def test_bad_endpoint_urls(url: str) -> None:
    with pytest.raises(HuoziError):
        parse_endpoint(url)


def test_chat_command_talks_to_our_server_through_endpoint(
    chat_server: RunningServer, huozi_home: Path
) -> None:
    """`huozi-local chat --endpoint URL` end to end: piped turns, one JSON line per reply."""
    import json
    import subprocess
    import sys

    from huozi_local.testing.tiny_model import RIG_TEXT

    proc = subprocess.run(
        [sys.executable, "-m", "huozi_local", "chat", "--endpoint", chat_server.url, "--json"],
        input="你好\n<|endofutterance|>再说一次\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in replies] == [RIG_TEXT, RIG_TEXT]
    assert [r["stop_reason"] for r in replies] == ["stop", "stop"]
    assert replies[0]["plan"]["endpoint"] == chat_server.url.rstrip("/")
    # The server saw the whole history on the second turn, the typed marker as plain text.
    last = chat_server.backend.conversations[-1]
    assert [m.role for m in last] == ["system", "user", "assistant", "user"]
    assert last[0].content == "你是一个智能助手"
    assert last[-1].content == "<|endofutterance|>再说一次"


def test_chat_endpoint_refused_is_one_line(huozi_home: Path) -> None:
    import subprocess
    import sys

    url = f"http://127.0.0.1:{_free_port()}/v1"
    proc = subprocess.run(
        [sys.executable, "-m", "huozi_local", "chat", "--endpoint", url],
        input="你好\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "refused" in proc.stderr
