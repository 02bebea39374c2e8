"""The OpenAI-compatible server, spoken to by the official `openai` client, over the real engine
and the tiny rigged models (rig 'chat' always answers 你好，龘世界！ then 57001; 'loop' never
stops)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai
import pytest
from api_server import GREEDY, RunningServer, huozi_roles, running_server
from openai.types.chat import ChatCompletionMessageParam

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.types import ChatMessage, SamplingOptions, collect_reply
from huozi_local.server.schemas import APIError, parse_chat_request, parse_completion_request

RIG_TEXT = "你好，龘世界！"
HUOZI_PROMPT = "<|beginofutterance|>用户\n你好<|endofutterance|>\n<|beginofutterance|>助手\n"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_engine(tiny_models) -> Iterator[LlamaEngine]:  # type: ignore[no-untyped-def]
    engine = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", rig="chat"), LoadOptions(n_ctx=512, seed=1)
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def loop_engine(tiny_models) -> Iterator[LlamaEngine]:  # type: ignore[no-untyped-def]
    engine = LlamaEngine.load(
        tiny_models.get("merged", "q4_0", rig="loop"), LoadOptions(n_ctx=1024, seed=1)
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def chat_server(chat_engine: LlamaEngine) -> Iterator[RunningServer]:
    with running_server(chat_engine) as server:
        yield server


@pytest.fixture(scope="module")
def loop_server(loop_engine: LlamaEngine) -> Iterator[RunningServer]:
    with running_server(loop_engine) as server:
        yield server


def client(server: RunningServer, api_key: str = "EMPTY") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=api_key, max_retries=0, timeout=120)


def raw_post(server: RunningServer, path: str, body: bytes) -> tuple[int, dict[str, object]]:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.request("POST", parts.path + path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# -- the model README's client, unchanged ---------------------------------------------------


def test_models_lists_the_served_model(chat_server: RunningServer) -> None:
    models = client(chat_server).models.list()
    assert [m.id for m in models.data] == ["huozi3-tiny"]
    assert models.data[0].owned_by == "huozi-local"


def test_readme_request_chinese_roles_non_streaming(
    chat_server: RunningServer, chat_engine: LlamaEngine
) -> None:
    messages = [
        {"role": "系统", "content": "你是一个智能助手"},
        {"role": "用户", "content": "写诗"},
    ]
    reply = client(chat_server).chat.completions.create(
        model="huozi",
        messages=messages,  # type: ignore[arg-type]
        extra_body={"stop_token_ids": [57001], "repetition_penalty": 1.1},
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == RIG_TEXT
    assert reply.choices[0].finish_reason == "stop"
    expected = collect_reply(
        chat_engine.stream_reply(
            [ChatMessage.of(m["role"], m["content"]) for m in messages], GREEDY
        )
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.completion_tokens > 0
    assert reply.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_streaming_with_english_roles_and_history(chat_server: RunningServer) -> None:
    stream = client(chat_server).chat.completions.create(
        model="huozi",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": RIG_TEXT},
            {"role": "user", "content": "again"},
        ],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"repetition_penalty": 1},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == RIG_TEXT
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 10
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_stops_with_length(loop_server: RunningServer) -> None:
    reply = client(loop_server).chat.completions.create(
        model="huozi", messages=huozi_roles({"role": "用户", "content": "go"}), max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert reply.choices[0].message.content == "你好，"
    chunks = list(
        client(loop_server).chat.completions.create(
            model="huozi", messages=[{"role": "user", "content": "go"}], max_tokens=40, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.startswith(RIG_TEXT + RIG_TEXT)


def test_stop_string_ends_the_reply(loop_server: RunningServer) -> None:
    reply = client(loop_server).chat.completions.create(
        model="huozi", messages=[{"role": "user", "content": "go"}], stop=["世界"], max_tokens=50
    )
    assert reply.choices[0].message.content == "你好，龘"
    assert reply.choices[0].finish_reason == "stop"


def test_n_choices(chat_server: RunningServer) -> None:
    reply = client(chat_server).chat.completions.create(
        model="huozi", messages=[{"role": "user", "content": "hi"}], n=2
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.message.content == RIG_TEXT for c in reply.choices)


# -- refusals in OpenAI's shape -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            "temperature",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_get_openai_error_bodies(
    chat_server: RunningServer, body: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(chat_server).post("/chat/completions", body=body, cast_to=object)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert isinstance(error["message"], str) and error["message"]


def test_malformed_json_and_unknown_route(chat_server: RunningServer) -> None:
    status, body = raw_post(chat_server, "/chat/completions", b"{not json")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    status, body = raw_post(chat_server, "/nothing/here", b"{}")
    assert status == 404 and body["error"]["code"] == "not_found"  # type: ignore[index]


def test_api_key_is_enforced(chat_engine: LlamaEngine) -> None:
    with running_server(chat_engine, api_key="sekret") as server:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(server, "wrong").models.list()
        assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        reply = client(server, "sekret").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == RIG_TEXT


# -- queueing and cancellation --------------------------------------------------------------


def test_eight_concurrent_requests_all_answered(loop_server: RunningServer) -> None:
    """Distinct max_tokens per request prove each answer went to its own client."""

    def ask(i: int) -> tuple[int, str, str | None]:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"question {i}"}]
        if i % 2:
            chunks = list(
                client(loop_server).chat.completions.create(
                    model="huozi",
                    max_tokens=3 + i,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert chunks[-1].usage is not None
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c for c in chunks if c.choices][-1].choices[0].finish_reason
            return chunks[-1].usage.completion_tokens, text, finish
        reply = client(loop_server).chat.completions.create(
            model="huozi", max_tokens=3 + i, messages=messages
        )
        assert reply.usage is not None
        return (
            reply.usage.completion_tokens,
            reply.choices[0].message.content or "",
            (reply.choices[0].finish_reason),
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert [tokens for tokens, _, _ in answers] == [3 + i for i in range(8)]
    assert all(finish == "length" for _, _, finish in answers)
    # A budget that ends inside 龘 (three byte tokens) shows the cut character as U+FFFD.
    assert all((RIG_TEXT * 3).startswith(text.rstrip("\ufffd")) for _, text, _ in answers)
    assert all(text.startswith("你好，") for _, text, _ in answers)


def test_client_disconnect_cancels_generation(loop_server: RunningServer) -> None:
    backend = loop_server.backend
    while backend.finished.acquire(blocking=False):
        pass
    stream = client(loop_server).chat.completions.create(
        model="huozi",
        messages=[{"role": "user", "content": "forever"}],
        max_tokens=900,
        stream=True,
    )
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received >= 3:
            break
    stream.close()
    assert backend.finished.acquire(timeout=120)
    result = backend.results[-1]
    assert result.stop_reason == "cancelled"
    assert result.completion_tokens < 900


def test_a_client_that_closes_during_a_reply_that_is_not_streamed_cancels_it(
    loop_server: RunningServer,
) -> None:
    """A client that gives up (its timeout, a stop button) closes its socket before anything
    was written back: the EOF is all the server sees, and generating on for nobody would keep
    the one model from everyone queued behind. A half-close looks the same on the wire."""
    backend = loop_server.backend
    while backend.finished.acquire(blocking=False):
        pass
    url = urlsplit(loop_server.url)
    body = json.dumps(
        {"model": "huozi", "messages": [{"role": "user", "content": "forever"}], "max_tokens": 900}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    assert url.hostname is not None and url.port is not None
    asked = len(backend.conversations)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head + body)
        for _ in range(12_000):  # until the reply has begun (a close before it is never begun)
            if len(backend.conversations) > asked:
                break
            time.sleep(0.01)
        assert len(backend.conversations) > asked, "the reply never began"
    assert backend.finished.acquire(timeout=120)
    result = backend.results[-1]
    assert result.stop_reason == "cancelled"
    assert result.completion_tokens < 900


# -- /v1/completions ------------------------------------------------------------------------


def test_raw_completions_parse_the_huozi_format(chat_server: RunningServer) -> None:
    reply = client(chat_server).completions.create(model="huozi", prompt=HUOZI_PROMPT)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == RIG_TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 5
    chunks = list(
        client(chat_server).completions.create(
            model="huozi", prompt=HUOZI_PROMPT, stream=True, echo=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == HUOZI_PROMPT + RIG_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_raw_completion_length(loop_server: RunningServer) -> None:
    reply = client(loop_server).completions.create(model="huozi", prompt="你好", max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 4


# -- request parsing, without a server --------------------------------------------------------


def test_parsing_maps_vllm_fields_onto_sampling() -> None:
    defaults = SamplingOptions(temperature=0.2, repeat_penalty=1.1)
    request = parse_chat_request(
        {
            "messages": [
                {"role": "系统", "content": "s"},
                {
                    "role": "User",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "repetition_penalty": 1,
            "stop_token_ids": [57001],
            "stop": "END",
            "max_tokens": 7,
            "seed": 3,
            "top_p": 0.5,
        },
        defaults,
    )
    assert [(m.role, m.content) for m in request.messages] == [("system", "s"), ("user", "ab")]
    sampling = request.sampling
    assert sampling.repeat_penalty == 1.0 and sampling.temperature == 0.2
    assert sampling.stop_token_ids == (57001,) and sampling.stop == ("END",)
    assert (sampling.max_tokens, sampling.seed, sampling.top_p) == (7, 3, 0.5)
    assert not request.stream and request.n == 1


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 9},
        {"temperature": True},
        {"top_p": 1.5},
        {"stop_token_ids": ["a"]},
        {"repetition_penalty": 0},
        {"seed": 1.5},
        {"stream_options": []},
    ],
)
def test_parsing_rejects_bad_values(extra: dict[str, object]) -> None:
    body: dict[str, object] = {"messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(APIError) as caught:
        parse_chat_request(body, SamplingOptions())
    assert caught.value.status == 400 and caught.value.param == next(iter(extra))


def test_completion_prompt_must_be_text() -> None:
    assert parse_completion_request({"prompt": ["one"]}, SamplingOptions()).prompt == "one"
    with pytest.raises(APIError):
        parse_completion_request({"prompt": [1, 2, 3]}, SamplingOptions())


def test_server_threads_do_not_leak(chat_engine: LlamaEngine) -> None:
    """By identity, not by name: other servers of this module run threads of the same name."""
    before = set(threading.enumerate())
    with running_server(chat_engine) as server:
        client(server).models.list()
        started = [t for t in threading.enumerate() if t not in before]
        assert any(t.name == "huozi-generation" for t in started)
    assert [t for t in started if t.is_alive() and t.name == "huozi-generation"] == []


async def test_a_slow_client_gets_the_same_text_in_fewer_chunks(loop_engine: LlamaEngine) -> None:
    """Deltas that queue up while the client is busy arrive merged: same text, end and result."""
    import asyncio

    from huozi_local.core.chat.types import ReplyResult, TextDelta
    from huozi_local.server.queue import GenerationQueue

    generation = GenerationQueue()
    sampling = SamplingOptions(temperature=0.0, max_tokens=120)
    messages = [ChatMessage("user", "一直说下去")]
    events = []
    try:
        async for event in generation.events(
            lambda cancel: loop_engine.stream_reply(messages, sampling, cancel)
        ):
            events.append(event)
            await asyncio.sleep(0.02)  # a client that reads slower than the model writes
    finally:
        generation.close()
    result = events[-1]
    assert isinstance(result, ReplyResult) and result.completion_tokens == 120
    deltas = [e for e in events[:-1] if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == result.text
    assert len(deltas) < result.completion_tokens / 2


def test_the_served_system_prompt_goes_first_unless_a_request_has_its_own(
    chat_engine: LlamaEngine,
) -> None:
    """The engine adds no system message of its own any more: `serve` owns the default (--system
    or the settings') and puts it in front of a request that carries none."""
    with running_server(chat_engine, system_prompt="你是一个智能助手") as server:
        asked = client(server)
        user: list[ChatCompletionMessageParam] = [{"role": "user", "content": "你好"}]
        asked.chat.completions.create(model=server.model_id, messages=user)
        assert server.backend.conversations[-1] == [
            ChatMessage("system", "你是一个智能助手"),
            ChatMessage("user", "你好"),
        ]
        own: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": "简短回答"},
            {"role": "user", "content": "你好"},
        ]
        asked.chat.completions.create(model=server.model_id, messages=own)
        assert [m.content for m in server.backend.conversations[-1]] == ["简短回答", "你好"]
