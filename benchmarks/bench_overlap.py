"""What a caller's per-token work costs a reply: the decode loop's hand-over point, measured.

The loop hands each token to its caller just before the longer of the two waits that follow
(`decode_loop`, `KvSession.decode_returns_early`): on the CPU llama_decode computes before it
returns, so the token goes out first and a caller in another thread (the app's screen, the
server's event loop) holds the GIL while this thread waits in llama_decode without it; on a GPU or
an RPC worker llama_decode only queues the work, so the next decode is queued first and even a
caller in the same thread works while the device computes. Two parts, each against the other
order written out here with the same KvSession and sampler chain:

1. CPU: the same model on this machine's CPU (1 thread); the caller is another thread that spends
   --work-us of Python (holding the GIL) on each token, as the app and the server do. Against:
   decode queued first.
2. async device: a `huozi-local worker` on 127.0.0.1 serving this CPU (1 thread), the whole tiny
   q4_0 model on it (a real ggml device that llama.cpp treats as a GPU); the caller, in the same
   thread, blocks --wait-us per token (a sleep: a write that waits). Against: token first.

Printed as (with caller) / (caller idle), medians of interleaved rounds; the goal is 1.0 for the
engine, and the line "not hidden at all" is what a caller's time added in full would give.

    python benchmarks/bench_overlap.py [--rounds 7 --tokens 128 --wait-us 300 --work-us 300]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from huozi_local.core.chat.decode_loop import sampler_call  # noqa: E402
from huozi_local.core.chat.engine import LlamaEngine  # noqa: E402
from huozi_local.core.chat.loader import LoadOptions  # noqa: E402
from huozi_local.core.chat.sampler_chain import SamplerChain  # noqa: E402
from huozi_local.core.chat.types import (  # noqa: E402
    ChatMessage,
    ReplyResult,
    SamplingOptions,
    TextDelta,
)
from huozi_local.testing.rpc_worker import RpcWorker  # noqa: E402
from huozi_local.testing.tiny_model import TinyModels  # noqa: E402

QUESTION = [ChatMessage("user", "请介绍一下哈尔滨工业大学的历史。")]
Caller = Callable[[], None]  # what the caller does with one token, in this thread


def busy(seconds: float) -> None:
    """Python work that holds the GIL, as drawing a token or writing an SSE event does."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


class CallerThread:
    """Another thread that gets every token through a queue and works on each."""

    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self.inbox: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.inbox.get() is not None:
            busy(self.work_s)

    def hand(self) -> None:
        self.inbox.put(1)

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join()


class Contenders:
    def __init__(self, engine: LlamaEngine, tokens: int) -> None:
        self.engine = engine
        self.options = SamplingOptions(
            temperature=0.2, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, seed=1,
            max_tokens=tokens,
        )  # fmt: skip

    def engine_run(self, caller: Caller | None) -> float:
        self.engine.clear_cache()
        result: ReplyResult | None = None
        for event in self.engine.stream_reply(QUESTION, self.options):
            if isinstance(event, TextDelta) and caller is not None:
                caller()
            elif isinstance(event, ReplyResult):
                result = event
        assert result is not None and result.completion_tokens == self.options.max_tokens
        return result.tokens_per_s

    def other_order_run(self, caller: Caller, queue_first: bool) -> float:
        """The loop with the hand-over point fixed: before the decode, or after queuing it."""
        engine = self.engine
        engine.clear_cache()
        session = engine._session
        session.evaluate(engine.prompt_tokens(QUESTION))
        sample = sampler_call(session)
        count, first = 0, 0.0
        with SamplerChain(self.options, 1, engine.llama.n_vocab()) as chain:
            while True:
                token = sample(chain)
                count += 1
                if count == 1:
                    first = time.perf_counter()
                last = count == self.options.max_tokens
                if queue_first and not last:
                    session.push(token)
                caller()
                if last:
                    break
                if not queue_first:
                    session.push(token)
        rate = (count - 1) / (time.perf_counter() - first)
        engine.clear_cache()
        return rate


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    for run in runs.values():
        run()  # warm-up
    results: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(runs[name]())
    return results


def report(title: str, results: dict[str, list[float]], caller_s: float) -> None:
    base = statistics.median(results["engine"])
    print(f"\n{title}")
    print(f"  engine, caller idle: {base:.1f} tokens/s ({1000 / base:.2f} ms/token)")
    for name in list(results)[1:]:
        pairs = [a / b for a, b in zip(results[name], results["engine"], strict=True)]
        print(
            f"  {name} / engine idle: {statistics.median(results[name]) / base:.3f} "
            f"(median of per-round ratios {statistics.median(pairs):.3f})"
        )
    print(f"  (a caller's time not hidden at all would give {1 / (1 + caller_s * base):.3f})")


def async_device(model: Path, args: argparse.Namespace) -> None:
    wait_s = args.wait_us / 1e6

    def wait() -> None:
        time.sleep(wait_s)

    with RpcWorker(threads=1) as worker:
        engine = LlamaEngine.load(
            model, LoadOptions(n_ctx=2048, n_gpu_layers=99, rpc_servers=(str(worker.endpoint),))
        )
        try:
            contenders = Contenders(engine, args.tokens)
            results = interleaved(
                {
                    "engine": lambda: contenders.engine_run(None),
                    "engine + caller": lambda: contenders.engine_run(wait),
                    "token first + caller": lambda: contenders.other_order_run(wait, False),
                },
                args.rounds,
            )
            returns_early = engine._session.decode_returns_early
        finally:
            engine.close()
    report(
        f"2. RPC0 (a worker on 127.0.0.1, 1 thread), {args.tokens} tokens, {args.rounds} rounds; "
        f"the caller, in the generating thread, waits {args.wait_us:.0f} us per token "
        f"(engine measured decode_returns_early={returns_early})",
        results,
        wait_s,
    )


def cpu(model: Path, args: argparse.Namespace) -> None:
    work_s = args.work_us / 1e6
    engine = LlamaEngine.load(model, LoadOptions(n_ctx=2048, n_threads=1))
    caller = CallerThread(work_s)
    try:
        contenders = Contenders(engine, args.tokens)
        results = interleaved(
            {
                "engine": lambda: contenders.engine_run(None),
                "engine + caller": lambda: contenders.engine_run(caller.hand),
                "queued first + caller": lambda: contenders.other_order_run(caller.hand, True),
            },
            args.rounds,
        )
        returns_early = engine._session.decode_returns_early
    finally:
        caller.close()
        engine.close()
    report(
        f"1. CPU (1 thread), {args.tokens} tokens, {args.rounds} rounds; the caller, another "
        f"thread, spends {args.work_us:.0f} us of Python on each token "
        f"(engine measured decode_returns_early={returns_early})",
        results,
        work_s,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--wait-us", type=float, default=300.0)
    parser.add_argument("--work-us", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = TinyModels(Path(tmp)).get("merged", "q4_0", "loop")
        cpu(model, args)  # first: ggml keeps a stopped worker registered, and later loads reach it
        async_device(model, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
