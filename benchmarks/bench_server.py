"""Server overhead: streamed tokens/s through our server (in its own process, as `huozi-local
serve` runs it; the openai client, SSE) as a ratio to the engine alone in this process, in the same
run, with the same model and load settings (tiny model, rig 'loop', which never stops, so every
reply is exactly --max-tokens long). RemoteBackend over the same server is measured too.

Both sides load with the same explicit settings (one thread by default) rather than the planner's:
on a small shared machine, llama.cpp threads that wait on each other make the figures noise.

Load and faults (`--part load`): 8 clients at once, each sending short chats (rig 'chat', a 9-token
reply), first alone (the baseline), then while a ninth client keeps sending one 3000-message
conversation that must be trimmed to the context: p50/p99 latency of the 8 and their ratio to the
baseline, and how many requests were lost (not answered 200). Then the time to refuse a 64 MB
body, as a ratio to one short chat request, and the time to trim a 3000-message conversation
in-process (goal < 1 s), as a ratio to tokenizing that conversation once.

    HUOZI_TINY_MODELS_DIR=/tmp/tiny1 python benchmarks/bench_server.py [--part throughput|load]
        [--max-tokens 300] [--runs 3] [--requests 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import openai

from huozi_local.core.chat.context_window import fit_to_context
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.remote_backend import RemoteBackend
from huozi_local.core.chat.types import ChatMessage, SamplingOptions, collect_reply
from huozi_local.testing.tiny_model import TinyModels


def load(model: Path, ctx: int, threads: int) -> LlamaEngine:
    return LlamaEngine.load(model, LoadOptions(n_ctx=ctx, n_threads=threads, seed=1))


def serve_child(model: Path, ctx: int, threads: int) -> int:
    """The server process: the same app and runner `huozi-local serve` uses."""
    from huozi_local.server.app import ServedModel, create_app
    from huozi_local.server.runner import base_url, bind_socket, make_server
    from huozi_local.server.serving import raw_completer

    engine = load(model, ctx, threads)
    served = ServedModel(engine, "huozi3-tiny-loop", raw_completer(engine))
    sock = bind_socket("127.0.0.1", 0)
    print(f"serving at {base_url(sock)}", file=sys.stderr, flush=True)
    make_server(create_app(served, on_shutdown=engine.close), log_level="warning").run(
        sockets=[sock]
    )
    return 0


def start_server(model: Path, ctx: int, threads: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, __file__, "--serve-child", str(model), str(ctx), str(threads)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    for line in server.stderr:
        if " at http" in line:
            return server, line.split(" at ")[1].split()[0]
    raise SystemExit(f"the server did not start (exit {server.wait()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=["throughput", "load", "all"], default="all")
    parser.add_argument("--requests", type=int, default=10, help="short chats per load client")
    parser.add_argument("--serve-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        path, ctx_text, threads_text = args.serve_child
        return serve_child(Path(path), int(ctx_text), int(threads_text))
    root = os.environ.get("HUOZI_TINY_MODELS_DIR") or tempfile.mkdtemp(prefix="tiny-models-")
    if args.part in ("load", "all"):
        load_and_faults(TinyModels(Path(root)).get("merged", "q4_0", rig="chat"), args)
    if args.part in ("throughput", "all"):
        throughput(TinyModels(Path(root)).get("merged", "q4_0", rig="loop"), args)
    return 0


def throughput(model: Path, args: argparse.Namespace) -> None:
    ctx = 2048
    engine = load(model, ctx, args.threads)
    messages = [ChatMessage("user", "一直说下去")]
    sampling = SamplingOptions(temperature=0.0, max_tokens=args.max_tokens)

    def engine_alone() -> int:
        return collect_reply(engine.stream_reply(messages, sampling)).completion_tokens

    server, url = start_server(model, ctx, args.threads)
    try:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        remote = RemoteBackend(url)

        def through_server() -> int:
            usage = None
            for chunk in client.chat.completions.create(
                model=remote.model_name,
                messages=[{"role": "user", "content": "一直说下去"}],
                max_tokens=args.max_tokens,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
            ):
                usage = chunk.usage or usage
            assert usage is not None
            return usage.completion_tokens

        def through_remote() -> int:
            return collect_reply(remote.stream_reply(messages, sampling)).completion_tokens

        engine_alone()  # warm-ups: page the weights in, fill the KV prefix
        through_server()
        rates = interleaved(
            {"engine": engine_alone, "server": through_server, "remote": through_remote},
            args.runs,
            args.max_tokens,
        )
    finally:
        server.terminate()
        server.wait(30)
        engine.close()
    baseline = statistics.median(rates["engine"])
    print(
        f"reply length: {args.max_tokens} tokens, {args.runs} rounds (engine, server and "
        f"RemoteBackend in turn, order rotating), {args.threads} thread(s), median tokens/s"
    )
    print(f"engine alone:                {baseline:8.1f} tok/s")
    for name, label in (
        ("server", "server (openai client, SSE):"),
        ("remote", "RemoteBackend over server:"),
    ):
        pairs = [a / b for a, b in zip(rates[name], rates["engine"], strict=True)]
        median = statistics.median(rates[name])
        print(
            f"{label:28s} {median:8.1f} tok/s  ratio {median / baseline:.3f} "
            f"(median of per-round ratios {statistics.median(pairs):.3f})"
        )


def interleaved(
    runs: dict[str, Callable[[], int]], rounds: int, expected: int
) -> dict[str, list[float]]:
    """Tokens/s of each contender per round, the order rotating: a busy neighbour slows
    whichever runs at that moment, and a round's contenders run seconds apart."""
    names = list(runs)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            tokens = runs[name]()
            rates[name].append(tokens / (time.perf_counter() - started))
            assert tokens == expected, (name, tokens)
    return rates


# -- load and faults --------------------------------------------------------------------------
LOAD_CLIENTS = 8
LONG_MESSAGES = 3000
BIG_BODY = 64 * 1024 * 1024
SHORT = json.dumps({"messages": [{"role": "user", "content": "你好"}], "max_tokens": 16}).encode()


def long_conversation(messages: int) -> list[dict[str, str]]:
    rows = []
    for index in range(messages // 2):
        rows.append({"role": "user", "content": f"第{index}个问题：哈尔滨冬天有多冷？请详细说说。"})
        rows.append({"role": "assistant", "content": f"回答{index}：很冷，一月平均零下十八度。"})
    return rows


def post(url: str, body: bytes, *, timeout: float = 600) -> tuple[int, float]:
    """(status, seconds) for one POST to /chat/completions over a fresh connection."""
    parts = urlsplit(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        connection.request("POST", parts.path + "/chat/completions", body, headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        return -1, time.perf_counter() - started
    finally:
        connection.close()


class Latencies(NamedTuple):
    p50: float
    p99: float
    sent: int
    lost: int


def upload(url: str, size: int, *, chunked: bool) -> tuple[int, float]:
    """POST a `size`-byte body and time it until the status line arrives.

    On a raw socket, the body sent from a second thread while this one waits for the answer:
    the server refuses before it has read everything, and http.client would only report the
    write failing (the server closes the connection) instead of the 413 it sent."""
    import socket

    parts = urlsplit(url)
    head = (
        f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        "Content-Type: application/json\r\n"
        + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n")
        + "\r\n"
    ).encode()
    piece = b"x" * (1024 * 1024)
    started = time.perf_counter()
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=600)

    def send_body() -> None:
        try:
            sock.sendall(head)
            for _ in range(size // len(piece)):
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading: its answer is what counts

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        status_line = sock.makefile("rb").readline()
        seconds = time.perf_counter() - started
        status = int(status_line.split()[1]) if status_line else -1
    except (OSError, ValueError, IndexError):
        status, seconds = -1, time.perf_counter() - started
    finally:
        sock.close()
        sender.join(60)
    return status, seconds


def short_chats(url: str, requests: int, stop: threading.Event | None = None) -> Latencies:
    """LOAD_CLIENTS threads, `requests` short chats each: latencies and failures."""
    latencies: list[float] = []
    failed = [0]
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            status, seconds = post(url, SHORT)
            with lock:
                latencies.append(seconds)
                failed[0] += status != 200

    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if stop is not None:
        stop.set()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Latencies(statistics.median(ordered), p99, len(ordered), failed[0])


def load_and_faults(model: Path, args: argparse.Namespace) -> None:
    ctx = 2048
    server, url = start_server(model, ctx, args.threads)
    try:
        post(url, SHORT)  # warm-up
        alone = short_chats(url, args.requests)
        long_body = json.dumps({"messages": long_conversation(LONG_MESSAGES), "max_tokens": 16})
        stop = threading.Event()
        long_results: list[tuple[int, float]] = []

        def long_client() -> None:
            while not stop.is_set():
                long_results.append(post(url, long_body.encode()))

        hog = threading.Thread(target=long_client)
        hog.start()
        loaded = short_chats(url, args.requests, stop)
        hog.join()
        _status, one_short = post(url, SHORT)
        big_status, big_seconds = upload(url, BIG_BODY, chunked=False)
        chunked_status, chunked_seconds = upload(url, BIG_BODY, chunked=True)
    finally:
        server.terminate()
        server.wait(30)
    engine = load(model, ctx, args.threads)
    try:
        conversation = [ChatMessage.of(r["role"], r["content"]) for r in long_conversation(3000)]
        engine.prompt_tokens(conversation)  # warm-up: the first call fills the tokenizer's caches
        started = time.perf_counter()
        engine.prompt_tokens(conversation)
        tokenize_once = time.perf_counter() - started
        started = time.perf_counter()
        fitted = fit_to_context(conversation, engine.prompt_tokens, engine.n_ctx, 16)
        trim = time.perf_counter() - started
    finally:
        engine.close()
    long_ok = sum(status == 200 for status, _ in long_results)
    print(f"load: {LOAD_CLIENTS} clients x {args.requests} short chats, context {ctx}")
    print(
        f"  alone:                      p50 {alone.p50:.3f}s  p99 {alone.p99:.3f}s  "
        f"lost {alone.lost}/{alone.sent}"
    )
    print(
        f"  with a {LONG_MESSAGES}-message chat looping: p50 {loaded.p50:.3f}s  "
        f"p99 {loaded.p99:.3f}s  lost {loaded.lost}/{loaded.sent}  "
        f"ratio p50 {loaded.p50 / alone.p50:.2f}  p99 {loaded.p99 / alone.p99:.2f}"
    )
    print(f"  long conversations answered: {long_ok}/{len(long_results)}")
    long_seconds = [seconds for status, seconds in long_results if status == 200]
    if long_seconds:
        print(
            "  one long conversation (trim + prefill + reply): "
            f"{statistics.mean(long_seconds):.3f}s"
        )
    print(
        f"64 MB body, Content-Length: HTTP {big_status} in {big_seconds:.3f}s  "
        f"ratio to one short chat ({one_short:.3f}s): {big_seconds / one_short:.2f}"
    )
    print(
        f"64 MB body, chunked: HTTP {chunked_status} in {chunked_seconds:.3f}s  "
        f"ratio to one short chat: {chunked_seconds / one_short:.2f}"
    )
    print(
        f"trim {LONG_MESSAGES} messages to {ctx} tokens: {trim:.3f}s (goal < 1 s), "
        f"dropped {fitted.dropped_messages}; ratio to tokenizing it once "
        f"({tokenize_once:.3f}s): {trim / tokenize_once:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
