"""Server overhead: streamed tokens/s through our server (in its own process, as `huozi-local
serve` runs it; the openai client, SSE) as a ratio to the engine alone in this process, in the same
run, with the same model and load settings (tiny model, rig 'loop', which never stops, so every
reply is exactly --max-tokens long). RemoteBackend over the same server is measured too.

Both sides load with the same explicit settings (one thread by default) rather than the planner's:
on a small shared machine, llama.cpp threads that wait on each other make the figures noise.

    HUOZI_TINY_MODELS_DIR=/tmp/tiny1 python benchmarks/bench_server.py [--max-tokens 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import openai

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.remote_backend import RemoteBackend
from huozi_local.core.chat.types import ChatMessage, SamplingOptions, collect_reply
from huozi_local.testing.tiny_model import TinyModels


def measure(run: Callable[[], int], runs: int) -> tuple[float, int]:
    """Median tokens/s over `runs` replies (wall clock from request to last token)."""
    rates: list[float] = []
    tokens = 0
    for _ in range(runs):
        started = time.perf_counter()
        tokens = run()
        rates.append(tokens / (time.perf_counter() - started))
    return statistics.median(rates), tokens


def load(model: Path, ctx: int, threads: int) -> LlamaEngine:
    return LlamaEngine.load(model, n_ctx=ctx, n_threads=threads, seed=1)


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
    parser.add_argument("--serve-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        path, ctx_text, threads_text = args.serve_child
        return serve_child(Path(path), int(ctx_text), int(threads_text))
    root = os.environ.get("HUOZI_TINY_MODELS_DIR") or tempfile.mkdtemp(prefix="tiny-models-")
    model = TinyModels(Path(root)).get("merged", "q4_0", rig="loop")
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
        base, base_tokens = measure(engine_alone, args.runs)
        served, served_tokens = measure(through_server, args.runs)
        remote_rate, remote_tokens = measure(through_remote, args.runs)
        again, _ = measure(engine_alone, args.runs)  # a second baseline: the machine is shared
    finally:
        server.terminate()
        server.wait(30)
        engine.close()
    baseline = (base + again) / 2
    print(
        f"reply length: {args.max_tokens} tokens, {args.runs} runs each, "
        f"{args.threads} thread(s), median tokens/s"
    )
    print(f"engine alone:                {baseline:8.1f} tok/s  ({base:.1f} / {again:.1f})")
    print(f"server (openai client, SSE): {served:8.1f} tok/s  ratio {served / baseline:.3f}")
    print(
        f"RemoteBackend over server:   {remote_rate:8.1f} tok/s  ratio {remote_rate / baseline:.3f}"
    )
    assert base_tokens == served_tokens == remote_tokens == args.max_tokens
    return 0


if __name__ == "__main__":
    sys.exit(main())
