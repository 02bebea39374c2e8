"""What the prompt cache and the growing context save, at huozi3's real shapes.

A real-shape slice (huozi3's official tensor shapes, q4_0, --layers of the 32 layers; written by
the project's generator as a sparse file) and a conversation of about --tokens tokens written
from the project's own Chinese conversations. Every figure is a ratio against a baseline measured
in the same run, each measurement in a fresh process (as a user's new run is), the two kinds
interleaved so that this machine's drift hits both:

1. reopened from disk: time to first token when a new process restores the conversation's saved
   state (its file dropped from the page cache first, so it is really read from the disk)
   / when it evaluates the conversation (goal <= 0.05);
2. switched to in one process (from RAM): time to first token after switching back to a
   conversation / evaluating it in a process without a cache;
3. the restore itself (read, checked, handed to llama.cpp) / reading the same file plainly,
   both from the disk (dropped from the page cache first);
4. resident memory after a short conversation with the growing context / with today's fixed
   context (the planner's 32768 tokens);
5. one growth step (save the KV state, make the context twice as large, restore) / evaluating
   the tokens it carries over.

    python benchmarks/bench_prompt_cache.py [--layers 2] [--tokens 4000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.prompt_cache import CacheLimits, PromptCache, cache_key
from huozi_local.core.chat.types import ChatMessage, SamplingOptions, collect_reply
from huozi_local.core.gguf.header import read_gguf

job = json.loads(sys.argv[1])
gguf = read_gguf(job["model"])
ONE = SamplingOptions(temperature=0.0, max_tokens=1)

def engine(n_ctx, capacity=None, folder=None, ram=0):
    cache = None
    if job.get("cache"):
        key = cache_key(gguf, kv_cache_type="f16", flash_attn=False)
        limits = CacheLimits(ram, 64 * 1024**3 if folder else 0, Path(folder) if folder else None)
        cache = PromptCache(key, limits)
    return LlamaEngine.load(gguf, LoadOptions(n_ctx=n_ctx, n_threads=job["threads"]),
                            capacity=capacity, prompt_cache=cache)

def messages(name, extra=()):
    rows = json.loads(Path(job[name]).read_text(encoding="utf-8"))
    asked = [ChatMessage("user", t) for t in extra]
    return [ChatMessage(r["role"], r["content"]) for r in rows] + asked

def rss():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

out = {}
kind = job["kind"]
if kind in ("save", "reopen", "evaluate"):
    e = engine(job["n_ctx"], folder=job.get("folder"))
    result = collect_reply(e.stream_reply(messages("conversation", [job["question"]]), ONE))
    out = {"ttft": result.ttft_s, "prompt": result.prompt_tokens,
           "evaluated": result.evaluated_prompt_tokens, "restored": result.restored_prompt_tokens}
    if e.prompt_cache is not None:
        out["restore_s"] = e.prompt_cache.last.seconds
        out["state_bytes"] = e.prompt_cache.last.state_bytes
    e.close()
elif kind == "switch":
    e = engine(job["n_ctx"], ram=64 * 1024**3)
    collect_reply(e.stream_reply(messages("conversation", ["第一问"]), ONE))
    collect_reply(e.stream_reply(messages("other", ["第一问"]), ONE))
    result = collect_reply(e.stream_reply(messages("conversation", [job["question"]]), ONE))
    out = {"ttft": result.ttft_s, "restored": result.restored_prompt_tokens,
           "prompt": result.prompt_tokens, "source": e.prompt_cache.last.source}
    e.close()
elif kind == "memory":
    e = engine(job["n_ctx"], capacity=job["capacity"])
    short = [ChatMessage("user", "你好，请用一句话介绍哈尔滨。" * 8)]
    result = collect_reply(e.stream_reply(short, SamplingOptions(temperature=0.0, max_tokens=16)))
    now, peak = rss()
    out = {"rss": now, "hwm": peak, "allocated": e.allocated_n_ctx, "prompt": result.prompt_tokens}
    e.close()
elif kind == "grow":
    e = engine(job["n_ctx"], capacity=job["capacity"])
    whole = messages("conversation", [job["question"]])
    half = whole[: len(whole) // 3] + [whole[-1]]
    started = time.perf_counter()
    first = collect_reply(e.stream_reply(half, ONE))  # fits the starting context
    evaluate_s = time.perf_counter() - started
    steps = e.growth_steps
    result = collect_reply(e.stream_reply(whole, ONE))  # grows, carrying what `half` left
    out = {"steps": e.growth_steps - steps, "grow_s": e.last_growth_seconds,
           "evaluate_s": evaluate_s, "carried": first.prompt_tokens,
           "prompt": result.prompt_tokens, "allocated": e.allocated_n_ctx}
    e.close()
print("RESULT " + json.dumps(out))
"""


def run_child(job: dict[str, object]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {job['kind']} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT ") :]))


def conversation_of(tokens: int, index: int) -> list[dict[str, str]]:
    """A long conversation from the project's own Chinese text (about `tokens` tokens)."""
    from huozi_local.testing.conversations import CONVERSATIONS

    rows = [{"role": "system", "content": "你是一个智能助手"}]
    turn = 0
    while sum(len(r["content"]) for r in rows) * 1.1 < tokens:
        talk = CONVERSATIONS[(index + turn) % len(CONVERSATIONS)]
        rows.append(
            {"role": "user", "content": f"{talk.turns[turn % 2]}（第{turn}轮，对话{index}）"}
        )
        rows.append({"role": "assistant", "content": "好的。" + "".join(talk.turns)[::-1]})
        turn += 1
    return rows


def drop_from_page_cache(folder: Path) -> None:
    """Make the next read of the saved states come from the disk, not from memory."""
    for path in folder.rglob("*.kv"):
        with open(path, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def disk_read_seconds(folder: Path) -> float:
    """Seconds to read the saved states' files from the disk (dropped from the page cache
    first): the bytes the restore read, read plainly."""
    drop_from_page_cache(folder)
    started = time.perf_counter()
    for path in folder.rglob("*.kv"):
        with open(path, "rb") as handle:
            while handle.read(8 * 1024**2):
                pass
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf

    with tempfile.TemporaryDirectory(prefix="huozi-bench-cache-") as tmp:
        root = Path(tmp)
        model = write_real_shape_gguf(root / "huozi3-slice.gguf", RealShape(n_layers=args.layers))
        conversation, other = root / "conversation.json", root / "other.json"
        conversation.write_text(json.dumps(conversation_of(args.tokens, 0), ensure_ascii=False))
        other.write_text(json.dumps(conversation_of(args.tokens, 3), ensure_ascii=False))
        folder = root / "prompts"
        base = {
            "model": str(model),
            "conversation": str(conversation),
            "other": str(other),
            "threads": args.threads,
            "n_ctx": 8192,
            "question": "请总结我们的对话。",
        }
        # The conversation was saved after an earlier question; reopened, a new one is asked.
        earlier = {"question": "先说说你是谁。"}
        saved = run_child({**base, **earlier, "kind": "save", "cache": True, "folder": str(folder)})
        print(
            f"real-shape slice: {args.layers} of 32 layers, q4_0; conversation "
            f"{saved['prompt']:.0f} tokens; {args.threads} threads"
        )
        reopened, evaluated, plain_reads = [], [], []
        for round_ in range(args.rounds):
            evaluated.append(run_child({**base, "kind": "evaluate"}))
            copy = root / f"prompts-{round_}"  # each round reopens what the first run saved
            shutil.copytree(folder, copy)
            drop_from_page_cache(copy)
            reopened.append(
                run_child({**base, "kind": "reopen", "cache": True, "folder": str(copy)})
            )
            shutil.rmtree(copy)
            shutil.copytree(folder, copy)
            plain_reads.append(disk_read_seconds(copy))
            shutil.rmtree(copy)
        switched = run_child({**base, "kind": "switch", "cache": True})
        t_eval = statistics.median(r["ttft"] for r in evaluated)
        t_open = statistics.median(r["ttft"] for r in reopened)
        print("\n| measurement | with the cache | without | ratio | goal |")
        print("|---|---|---|---|---|")
        print(
            f"| reopened in a new process (from disk) | {t_open:.3f} s | {t_eval:.2f} s | "
            f"{t_open / t_eval:.4f} | <= 0.05 |"
        )
        print(
            f"| switched back in one process (from RAM) | {switched['ttft']:.3f} s | "
            f"{t_eval:.2f} s | {switched['ttft'] / t_eval:.4f} | |"
        )
        state = statistics.median(r["state_bytes"] for r in reopened)
        restore = statistics.median(r["restore_s"] for r in reopened)
        read = statistics.median(plain_reads)
        print(
            f"| restore of {state / 1e6:.1f} MB / reading as many bytes from this disk | "
            f"{restore:.3f} s | {read:.3f} s | {restore / read:.2f} | |"
        )
        restored = statistics.median(r["restored"] for r in reopened)
        print(f"\nrestored {restored:.0f} of {saved['prompt']:.0f} prompt tokens from disk; "
              f"{switched['restored']:.0f} from RAM ({switched['source']})")  # fmt: skip

        fixed = run_child({**base, "kind": "memory", "n_ctx": 32768, "capacity": 32768})
        growing = run_child({**base, "kind": "memory", "n_ctx": 2048, "capacity": 32768})
        print("\n| short conversation | growing context | fixed 32768 | ratio |")
        print("|---|---|---|---|")
        print(
            f"| resident memory after the reply | {growing['rss'] / 1e6:.0f} MB "
            f"(context {growing['allocated']:.0f}) | {fixed['rss'] / 1e6:.0f} MB | "
            f"{growing['rss'] / fixed['rss']:.3f} |"
        )
        print(
            f"| peak resident memory | {growing['hwm'] / 1e6:.0f} MB | {fixed['hwm'] / 1e6:.0f} MB"
            f" | {growing['hwm'] / fixed['hwm']:.3f} |"
        )
        grown = run_child({**base, "kind": "grow", "n_ctx": 2048, "capacity": 32768})
        print(
            f"\none growth step carrying {grown['carried']:.0f} tokens (to a context of "
            f"{grown['allocated']:.0f} for a {grown['prompt']:.0f}-token prompt): "
            f"{grown['grow_s']:.3f} s = {grown['grow_s'] / grown['evaluate_s']:.4f} of evaluating "
            f"those tokens ({grown['evaluate_s']:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
