"""How much of a caller's per-token work the decode loop hides behind the device's compute.

On a GPU, and on an RPC worker, llama_decode returns once the work is queued; only sampling
waits for it. The engine queues the next decode before it hands a token to its caller
(`decode_loop`), so a caller that spends time on each token (the app drawing it, the server
writing it to a socket) should cost the reply nothing while that time is less than the device's.

Measured on a real ggml device without a GPU: a `huozi-local worker` on 127.0.0.1 serving this
machine's CPU (1 thread), the whole tiny q4_0 model on it (llama.cpp sees a GPU-typed device,
RPC0). Contenders, in interleaved rounds (medians of tokens/s over --tokens tokens):
- engine: `stream_reply`, the caller does nothing with a token;
- engine + wait: the caller blocks --wait-us per token (a sleep: a write that waits, not CPU);
- serial + wait: the order before (handle the token, then queue the next decode), written out
  here with the same KvSession and sampler chain, the caller blocking the same time.
Prints (engine + wait) / engine, whose goal is 1.0, and (serial + wait) / engine, what the caller's
wait cost before. On a CPU-only engine decode is synchronous and neither order can hide anything.

    python benchmarks/bench_overlap.py [--rounds 7 --tokens 128 --wait-us 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from huozi_local.core.chat.decode_loop import sampler_call  # noqa: E402
from huozi_local.core.chat.engine import LlamaEngine  # noqa: E402
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


class Contenders:
    def __init__(self, engine: LlamaEngine, tokens: int, wait_s: float) -> None:
        self.engine = engine
        self.wait_s = wait_s
        self.options = SamplingOptions(
            temperature=0.2, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, seed=1,
            max_tokens=tokens,
        )  # fmt: skip

    def engine_run(self, wait_s: float) -> float:
        self.engine.clear_cache()
        result: ReplyResult | None = None
        for event in self.engine.stream_reply(QUESTION, self.options):
            if isinstance(event, TextDelta) and wait_s:
                time.sleep(wait_s)
            elif isinstance(event, ReplyResult):
                result = event
        assert result is not None and result.completion_tokens == self.options.max_tokens
        return result.tokens_per_s

    def serial_run(self) -> float:
        """Sample, let the caller have the token, then queue the next decode: the old order."""
        engine = self.engine
        engine.clear_cache()
        session = engine._session
        prompt = engine.prompt_tokens(QUESTION)
        session.evaluate(prompt)
        sample = sampler_call(session)
        count, first = 0, 0.0
        with SamplerChain(self.options, 1, engine.llama.n_vocab()) as chain:
            while True:
                token = sample(chain)
                count += 1
                if count == 1:
                    first = time.perf_counter()
                time.sleep(self.wait_s)  # the caller's turn
                if count == self.options.max_tokens:
                    break
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--wait-us", type=float, default=300.0)
    args = parser.parse_args()
    wait_s = args.wait_us / 1e6
    with tempfile.TemporaryDirectory() as tmp, RpcWorker(threads=1) as worker:
        model = TinyModels(Path(tmp)).get("merged", "q4_0", "loop")
        engine = LlamaEngine.load(
            model, n_ctx=2048, n_gpu_layers=99, rpc_servers=[str(worker.endpoint)]
        )
        try:
            contenders = Contenders(engine, args.tokens, wait_s)
            results = interleaved(
                {
                    "engine": lambda: contenders.engine_run(0.0),
                    "engine + wait": lambda: contenders.engine_run(wait_s),
                    "serial + wait": contenders.serial_run,
                },
                args.rounds,
            )
        finally:
            engine.close()
    medians = {name: statistics.median(values) for name, values in results.items()}
    base = medians["engine"]
    print(
        f"tiny q4_0 on RPC0 (a worker on 127.0.0.1, 1 thread), {args.tokens} tokens, "
        f"{args.rounds} rounds; the caller waits {args.wait_us:.0f} us per token"
    )
    print(f"  engine (caller idle): {base:.1f} tokens/s ({1000 / base:.2f} ms/token)")
    for name in ("engine + wait", "serial + wait"):
        pairs = [a / b for a, b in zip(results[name], results["engine"], strict=True)]
        print(
            f"  {name} / engine: {medians[name] / base:.3f} "
            f"(median of per-round ratios {statistics.median(pairs):.3f})"
        )
    serial_expected = 1 / (1 + wait_s * base)
    print(f"  (a wait that is not hidden at all would give {serial_expected:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
