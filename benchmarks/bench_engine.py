"""The engine against llama.cpp's own `llama-bench` and the bare binding, in one run.

1. Decode (tg): tokens/s of `LlamaEngine.stream_reply` (128 tokens after a short chat prompt,
   the README's sampling: top-k 40, top-p 0.9, min-p 0.05, temperature 0.2, repeat penalty 1.1)
   over llama-bench's tg128 at the same depth, and over bare `Llama.generate` with the same
   sampling. llama-bench samples nothing, so sampling counts against the engine.
   Goals: engine / llama-bench >= 0.97 at ~4 ms/token (tiny f32), >= 0.90 at ~1 ms/token (q4_0).
   Also over llama.cpp's own generation loop, `llama-completion` with the same sampling and the
   same prompt: its decode time plus its sampling time per token, as llama.cpp itself reports
   them (its printing is left out, in its favour).
2. Prompt processing (pp512): a 512-token prompt on an empty cache, as the time to the first
   token of `stream_completion` (tokenizing and the first sample included) and as the bare
   evaluation, over llama-bench's pp512. Goal: >= 0.97.
3. A conversation (the first turns of `--questions FILE`, MT-Bench-zh's question.jsonl from
   ../shared when present, else the project's own Chinese conversations): prompt tokens evaluated
   per turn against the tokens added since the last one (goal: equal), and the last turn's time to
   first token with the cache and without it.

llama-bench is built from the sdist of the installed llama-cpp-python (`llama_bench_build.py`),
so both sides run the same ggml kernels; both use --threads threads, flash attention off and an
f16 KV cache. Rounds interleave the three contenders (order rotating) and the figures are medians:
the machine may be shared, and a busy neighbour then slows whichever runs at that moment (the
best round of each side is printed too: load only ever slows a run down).

    HUOZI_TINY_MODELS_DIR=/tmp/tiny python benchmarks/bench_engine.py [--rounds 7 --threads 2]
        [--quants f32,q4_0] [--questions FILE] [--llama-bench PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_bench_build import CACHE_ROOT, build_llama_bench, build_llama_tool, installed_version

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.kv_session import KvSession
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.sampler_chain import PENALTY_LAST_N
from huozi_local.core.chat.types import (
    ChatMessage,
    ReplyResult,
    SamplingOptions,
    collect_reply,
)
from huozi_local.testing.conversations import CONVERSATIONS, load_conversations
from huozi_local.testing.tiny_model import Quant, TinyModels

MT_BENCH_ZH = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "mt-bench-zh" / "question.jsonl"
)
QUESTION = "请介绍一下哈尔滨工业大学的历史。"
README_SAMPLING = SamplingOptions(
    temperature=0.2, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, seed=1
)
LONG_TEXT = (
    "哈尔滨工业大学始建于1920年，是一所以理工为主的全国重点大学。"
    "Harbin Institute of Technology was founded in 1920 and is known for engineering. "
    "社会计算与信息检索研究中心研发了活字大模型，它能够回答问题、写作和翻译。"
)


def llama_bench(binary: Path, model: Path, threads: int, args: list[str]) -> float:
    """tokens/s of one llama-bench test (one repetition after its own warm-up)."""
    command = [str(binary), "-m", str(model), "-t", str(threads), "-fa", "0", "-r", "1"]
    done = subprocess.run(
        [*command, *args, "-o", "json"], capture_output=True, text=True, check=True
    )
    (record,) = json.loads(done.stdout)
    return float(record["avg_ts"])


def llama_completion(
    binary: Path, model: Path, threads: int, prompt: str, n: int, s: SamplingOptions
) -> float:
    """Generated tokens/s of llama.cpp's own loop: decodes / (its eval time + sampling time)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as file:
        file.write(prompt)
        file.flush()
        done = subprocess.run(
            [str(binary), "-m", str(model), "-t", str(threads), "-fa", "off", "-c", "2048",
             "-f", file.name, "-n", str(n), "-no-cnv", "--ignore-eos", "--no-warmup",
             "--temp", str(s.temperature), "--top-k", str(s.top_k), "--top-p", str(s.top_p),
             "--min-p", str(s.min_p), "--repeat-penalty", str(s.repeat_penalty),
             "--repeat-last-n", str(PENALTY_LAST_N), "-s", "1"],
            capture_output=True, text=True, errors="replace", check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    log = done.stderr
    timing = re.search(r"perf_print:\s+eval time =\s+([\d.]+) ms /\s+(\d+) runs", log)
    sampling = re.search(r"sampling time =\s+([\d.]+) ms", log)
    if timing is None or sampling is None:
        raise SystemExit(f"llama-completion printed no timings:\n{log[-2000:]}")
    eval_ms, runs = timing.groups()
    sampling_ms = float(sampling.group(1))
    decodes = int(runs)
    # n samples, n - 1 decodes; the engine's rate counts n - 1 of each, as here
    return decodes / ((float(eval_ms) + sampling_ms * decodes / n) / 1000)


def text_of_tokens(engine: LlamaEngine, n: int) -> str:
    """A prompt text that tokenizes to exactly `n` tokens (BOS included), or as near as it gets."""
    text = LONG_TEXT * (n // 40 + 2)
    low, high = 1, len(text)
    while low < high:  # the longest prefix with at most n tokens
        middle = (low + high + 1) // 2
        if len(engine.llama.tokenize(text[:middle].encode(), add_bos=True)) <= n:
            low = middle
        else:
            high = middle - 1
    return text[:low]


class Contenders:
    """One model loaded once; each method runs one measurement and returns tokens/s."""

    def __init__(
        self, model: Path, threads: int, n_tokens: int, binary: Path, completion: Path
    ) -> None:

        self.model = model
        self.threads = threads
        self.n_tokens = n_tokens
        self.binary = binary
        self.completion = completion
        self.engine = LlamaEngine.load(
            model, LoadOptions(n_ctx=2048, n_threads=threads, flash_attn=False)
        )
        self.engine.set_threads(threads, threads)
        self.messages = [ChatMessage("user", QUESTION)]
        self.prompt = self.engine.prompt_tokens(self.messages)
        self.sampling = SamplingOptions(**{**README_SAMPLING.__dict__, "max_tokens": n_tokens})
        self.pp_text = text_of_tokens(self.engine, 512)
        self.pp_ids = self.engine.llama.tokenize(self.pp_text.encode(), add_bos=True)

    # -- decode -----------------------------------------------------------------------------
    def engine_tg(self) -> float:
        self.engine.clear_cache()
        result = collect_reply(self.engine.stream_reply(self.messages, self.sampling))
        assert result.completion_tokens == self.n_tokens, result
        return result.tokens_per_s

    def bare_tg(self) -> float:
        llm = self.engine.llama
        llm.reset()
        llm.set_seed(1)
        count, first = 0, 0.0
        s = self.sampling
        for _token in llm.generate(
            self.prompt,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
        ):
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count == self.n_tokens:
                break
        rate = (count - 1) / (time.perf_counter() - first)
        self.engine.clear_cache()  # generate wrote the cache behind the engine's back
        return rate

    def completion_tg(self) -> float:
        bos = self.engine.llama.token_bos()
        ids = self.prompt[1:] if self.prompt[:1] == [bos] else self.prompt  # it adds its own BOS
        text = self.engine.llama.detokenize(ids, special=True).decode("utf-8")
        return llama_completion(
            self.completion, self.model, self.threads, text, self.n_tokens, self.sampling
        )

    def bench_tg(self) -> float:
        test = ["-p", "0", "-n", str(self.n_tokens), "-d", str(len(self.prompt))]
        return llama_bench(self.binary, self.model, self.threads, test)

    # -- prompt processing ------------------------------------------------------------------
    def engine_pp_ttft(self) -> float:
        self.engine.clear_cache()
        one = SamplingOptions(**{**README_SAMPLING.__dict__, "max_tokens": 1})
        result = collect_reply(self.engine.stream_completion(self.pp_text, one))
        assert result.evaluated_prompt_tokens == len(self.pp_ids), result
        return result.prompt_tokens / result.ttft_s

    def engine_pp_eval(self) -> float:
        session: KvSession = self.engine._session
        self.engine.clear_cache()
        started = time.perf_counter()
        session.evaluate(self.pp_ids)
        import llama_cpp

        llama_cpp.llama_synchronize(self.engine.llama.ctx)
        rate = len(self.pp_ids) / (time.perf_counter() - started)
        self.engine.clear_cache()
        return rate

    def bench_pp(self) -> float:
        return llama_bench(
            self.binary, self.model, self.threads, ["-p", str(len(self.pp_ids)), "-n", "0"]
        )

    def close(self) -> None:
        self.engine.close()


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    names = list(runs)
    results: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up round, not counted: first-touch of weights and buffers
        runs[name]()
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(runs[name]())
    return results


def ratio_line(label: str, ours: list[float], base: list[float], goal: float | None) -> str:
    """Ratio of medians, the median of per-round ratios, and best against best.

    A neighbour's load only ever slows a run down, so on a shared machine the best of the
    rounds is the steadiest estimate of each side's own speed; the medians are the headline.
    """
    pairs = [a / b for a, b in zip(ours, base, strict=True)]
    goal_text = f"  (goal >= {goal:.2f})" if goal else ""
    return (
        f"  {label}: {statistics.median(ours) / statistics.median(base):.3f} "
        f"(median of per-round ratios {statistics.median(pairs):.3f}, "
        f"best vs best {max(ours) / max(base):.3f}){goal_text}"
    )


def bench_model(
    models: TinyModels,
    quant: Quant,
    goal: float,
    args: argparse.Namespace,
    binary: Path,
    completion: Path,
) -> None:
    model = models.get("merged", quant, "loop")  # rig 'loop' never stops: every reply is full
    contenders = Contenders(model, args.threads, args.tokens, binary, completion)
    print(f"\n== tiny {quant} ({model.name}), {args.threads} threads, {args.rounds} rounds")
    try:
        tg = interleaved(
            {
                "llama-bench": contenders.bench_tg,
                "llama-completion": contenders.completion_tg,
                "bare": contenders.bare_tg,
                "engine": contenders.engine_tg,
            },
            args.rounds,
        )
        bench = statistics.median(tg["llama-bench"])
        print(
            f"decode tg{args.tokens} at depth {len(contenders.prompt)} (median tokens/s): "
            f"llama-bench {bench:.1f} ({1000 / bench:.2f} ms/token), "
            f"llama-completion {statistics.median(tg['llama-completion']):.1f}, "
            f"bare Llama.generate {statistics.median(tg['bare']):.1f}, "
            f"engine {statistics.median(tg['engine']):.1f}"
        )
        print(ratio_line("engine / llama-bench", tg["engine"], tg["llama-bench"], goal))
        completion_ratio = ratio_line(
            "engine / llama-completion", tg["engine"], tg["llama-completion"], None
        )
        print(completion_ratio)
        print(
            "    per token over llama-bench (median): engine "
            f"+{1e3 / statistics.median(tg['engine']) * 1e3 - 1e6 / bench:.0f} us, "
            "llama-completion "
            f"+{1e3 / statistics.median(tg['llama-completion']) * 1e3 - 1e6 / bench:.0f} us"
        )
        print(ratio_line("bare / llama-bench  ", tg["bare"], tg["llama-bench"], None))
        print(ratio_line("engine / bare       ", tg["engine"], tg["bare"], None))
        pp = interleaved(
            {
                "llama-bench": contenders.bench_pp,
                "engine ttft": contenders.engine_pp_ttft,
                "engine eval": contenders.engine_pp_eval,
            },
            args.rounds,
        )
        print(
            f"prompt pp{len(contenders.pp_ids)} (median tokens/s): llama-bench "
            f"{statistics.median(pp['llama-bench']):.1f}, engine time-to-first-token "
            f"{statistics.median(pp['engine ttft']):.1f}, engine evaluation only "
            f"{statistics.median(pp['engine eval']):.1f}"
        )
        print(ratio_line("engine ttft / llama-bench", pp["engine ttft"], pp["llama-bench"], 0.97))
        print(ratio_line("engine eval / llama-bench", pp["engine eval"], pp["llama-bench"], 0.97))
    finally:
        contenders.close()


def questions(path: Path | None) -> list[str]:
    """The first turns of a question file, or every turn of the project's own conversations."""
    if path is None:
        return [turn for c in CONVERSATIONS for turn in c.turns]
    return [c.turns[0] for c in load_conversations(path)]


def conversation(models: TinyModels, turns: int, asked: list[str]) -> None:
    engine = LlamaEngine.load(models.get("merged", "q4_0", "chat"), LoadOptions(n_ctx=4096))
    history: list[ChatMessage] = []
    results: list[ReplyResult] = []
    print(f"\n== conversation: {turns} turns, n_ctx {engine.n_ctx}")
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
    last = results[-1]
    engine.clear_cache()
    cold = collect_reply(engine.stream_reply(history[:-1]))
    print(
        f"  ttft turn {turns}: {last.ttft_s * 1000:.1f} ms with the cache, "
        f"{cold.ttft_s * 1000:.1f} ms without (ratio {last.ttft_s / cold.ttft_s:.2f})"
    )
    engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--quants", default="f32,q4_0")
    parser.add_argument("--llama-bench", type=Path, help="default: build it (cached)")
    parser.add_argument("--sdist-dir", type=Path, default=CACHE_ROOT / "sdist")
    parser.add_argument(
        "--questions",
        type=Path,
        default=MT_BENCH_ZH if MT_BENCH_ZH.exists() else None,
        help="MT-Bench-style question.jsonl (default: ../shared's MT-Bench-zh when present)",
    )
    args = parser.parse_args()
    binary = args.llama_bench or build_llama_bench(installed_version(), args.sdist_dir)
    completion = build_llama_tool(installed_version(), args.sdist_dir, "llama-completion")
    root = os.environ.get("HUOZI_TINY_MODELS_DIR") or tempfile.mkdtemp(prefix="huozi-bench-")
    models = TinyModels(Path(root))
    print(f"llama-bench: {binary}")
    goals: dict[Quant, float] = {"f32": 0.97, "q4_0": 0.90, "q2_k": 0.90}
    for quant in goals:
        if quant in args.quants.split(","):
            bench_model(models, quant, goals[quant], args, binary, completion)
    print(f"\nquestions: {args.questions or 'huozi_local.testing.conversations'}")
    conversation(models, args.turns, questions(args.questions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
