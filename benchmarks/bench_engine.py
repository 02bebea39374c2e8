"""Engine overhead and KV-cache reuse, measured on a tiny model in one run.

1. Decode speed: the engine's tokens/s over bare `Llama.create_completion` on the same model,
   prompt tokens and sampling settings (goal: ratio >= 0.98).
2. A 10-turn conversation (the first turns of `--questions FILE`, MT-Bench-zh's question.jsonl
   from ../shared when present, else the project's own Chinese conversations): prompt tokens
   evaluated per turn against the tokens added since the previous turn (goal: equal).
3. Time to first token of turn 10 over turn 1 (with reuse it stays near 1 although the prompt
   grew), and turn 10's first-token time without the cache, for scale.

Run: HUOZI_TINY_MODELS_DIR=/tmp/tiny1 python benchmarks/bench_engine.py [--tokens 256 --runs 3]
     [--questions FILE]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.types import ChatMessage, ReplyResult, SamplingOptions, collect_reply
from huozi_local.testing.conversations import CONVERSATIONS, load_conversations
from huozi_local.testing.tiny_model import TinyModels

MT_BENCH_ZH = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mt-bench-zh" / "question.jsonl"
)


def questions(path: Path | None) -> list[str]:
    """The first turns of a question file, or every turn of the project's own conversations."""
    if path is None:
        return [turn for c in CONVERSATIONS for turn in c.turns]
    return [c.turns[0] for c in load_conversations(path)]


def decode_ratio(models: TinyModels, n_tokens: int, runs: int, question: str) -> None:
    engine = LlamaEngine.load(models.get("merged", "q4_0", "loop"), n_ctx=1024, seed=1)
    llm = engine.llama
    messages = [ChatMessage("user", question)]
    prompt = engine.prompt_tokens(messages)
    sampling = SamplingOptions(max_tokens=n_tokens, seed=1)
    bare_rates: list[float] = []
    engine_rates: list[float] = []
    bare_cpu: list[float] = []  # tokens per CPU-second: steadier than wall time on a busy host
    engine_cpu: list[float] = []

    def bare_run() -> None:
        llm.reset()
        cpu = time.process_time()
        started = time.perf_counter()
        out = llm.create_completion(
            prompt,
            max_tokens=n_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            seed=1,
        )
        elapsed = time.perf_counter() - started
        bare_cpu.append(n_tokens / (time.process_time() - cpu))
        bare_rates.append(out["usage"]["completion_tokens"] / elapsed)

    def engine_run() -> None:
        llm.reset()
        cpu = time.process_time()
        started = time.perf_counter()
        result = collect_reply(engine.stream_reply(messages, sampling))
        elapsed = time.perf_counter() - started
        engine_cpu.append(result.completion_tokens / (time.process_time() - cpu))
        engine_rates.append(result.completion_tokens / elapsed)

    bare_run()  # warm-up, not counted: first-touch of the weights and buffers
    bare_rates.clear()
    bare_cpu.clear()
    for run in range(runs):  # interleaved, alternating order: a busy neighbour hits both
        first, second = (bare_run, engine_run) if run % 2 == 0 else (engine_run, bare_run)
        first()
        second()
    ratios = [ours / bare for ours, bare in zip(engine_rates, bare_rates, strict=True)]
    bare, ours = max(bare_rates), max(engine_rates)
    print(f"decode: prompt {len(prompt)} tokens, {n_tokens} new tokens, {runs} interleaved runs")
    print(f"  bare Llama.create_completion: best {bare:.1f} tokens/s")
    print(f"  LlamaEngine.stream_reply:     best {ours:.1f} tokens/s")
    print(
        f"  ratio engine/bare: best-vs-best {ours / bare:.3f}, median of pairs "
        f"{statistics.median(ratios):.3f}  (goal >= 0.98)"
    )
    cpu_ratio = statistics.median(engine_cpu) / statistics.median(bare_cpu)
    print(f"  ratio engine/bare per CPU-second (median): {cpu_ratio:.3f}")
    engine.close()


def conversation(models: TinyModels, turns: int, asked: list[str]) -> None:
    engine = LlamaEngine.load(models.get("merged", "q4_0", "chat"), n_ctx=4096)
    history: list[ChatMessage] = []
    results: list[ReplyResult] = []
    print(f"conversation: {turns} turns, n_ctx 4096")
    print("  turn  prompt  evaluated  added-since-last  ttft_ms")
    for turn, question in enumerate(asked[:turns], start=1):
        history.append(ChatMessage("user", question))
        result = collect_reply(engine.stream_reply(history))
        previous = results[-1] if results else None
        added = (
            result.prompt_tokens - (previous.prompt_tokens + previous.completion_tokens)
            if previous
            else result.prompt_tokens
        )
        print(
            f"  {turn:4d}  {result.prompt_tokens:6d}  {result.evaluated_prompt_tokens:9d}"
            f"  {added:16d}  {result.ttft_s * 1000:7.1f}"
        )
        results.append(result)
        history.append(ChatMessage("assistant", result.text))
    only_new = sum(
        r.evaluated_prompt_tokens == r.prompt_tokens - (p.prompt_tokens + p.completion_tokens)
        for p, r in itertools.pairwise(results)
    )
    print(f"  turns 2..{turns} evaluating only the added tokens: {only_new}/{turns - 1}")
    first, last = results[0], results[-1]
    print(f"  ttft turn {turns} / turn 1: {last.ttft_s / first.ttft_s:.2f}")
    engine.llama.reset()
    cold = collect_reply(engine.stream_reply(history[:-1]))
    print(
        f"  ttft turn {turns} without the cache: {cold.ttft_s * 1000:.1f} ms "
        f"(with reuse / without: {last.ttft_s / cold.ttft_s:.2f})"
    )
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument(
        "--questions",
        type=Path,
        default=MT_BENCH_ZH if MT_BENCH_ZH.exists() else None,
        help="MT-Bench-style question.jsonl (default: ../shared's MT-Bench-zh when present)",
    )
    args = parser.parse_args()
    asked = questions(args.questions)
    print(f"questions: {args.questions or 'huozi_local.testing.conversations'}")
    root = os.environ.get("HUOZI_TINY_MODELS_DIR") or tempfile.mkdtemp(prefix="huozi-bench-")
    models = TinyModels(Path(root))
    decode_ratio(models, args.tokens, args.runs, asked[0])
    conversation(models, args.turns, asked)


if __name__ == "__main__":
    main()
