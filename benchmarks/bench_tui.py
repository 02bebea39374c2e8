"""Does the chat screen slow generation down? Tokens/s with the app rendering vs the engine alone.

Both runs use the same loaded engine (the tiny huozi model, rig 'loop', which never stops by
itself, so every reply is exactly --tokens long), the same prompt and greedy sampling. The app runs
headless (App.run_test) and streams the reply through MarkdownStream exactly as on a terminal.
Rounds alternate engine/app so drift on a shared machine hits both, and every reply length given
is measured in each round. Goal (issue 12): ratio >= 0.95 at 600 tokens, where a fixed cost per
reply weighs most.

    python benchmarks/bench_tui.py [--tokens 600 1800] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.types import ChatMessage, ReplyEvent, SamplingOptions, collect_reply
from huozi_local.core.config import Paths, Settings
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import create_app
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.session import ModelInfo
from huozi_local.tui.widgets.chat_input import ChatInput

PROMPT = "请写一个很长的故事。"
SYSTEM = "你是一个智能助手"
SETTLE_S = 0.5


def engine_alone(engine: LlamaEngine, tokens: int) -> tuple[float, float, float]:
    """Decode tokens/s as the engine measures it, wall-clock tokens/s of the whole reply, and
    seconds to the first token."""
    sampling = SamplingOptions(temperature=0.0, max_tokens=tokens)
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", PROMPT)]
    started = time.perf_counter()
    result = collect_reply(engine.stream_reply(messages, sampling))
    wall = time.perf_counter() - started
    assert result.completion_tokens == tokens, result
    return result.tokens_per_s, result.completion_tokens / wall, result.ttft_s


async def with_app(engine: LlamaEngine, tokens: int, home: Path) -> tuple[float, float, int, float]:
    """The same reply streamed into the chat screen: decode and whole-reply tokens/s, how many
    draws (ReplyText) it took, and seconds from Enter to the first token the model produced."""
    paths = Paths(home / "config", home / "data", home / "models", home / "cache")
    store = ConversationStore.open(paths.database_file)
    settings = Settings(system_prompt=SYSTEM, temperature=0.0, max_tokens=tokens)
    info = ModelInfo("tiny-huozi", "q4_0", 0, engine.n_ctx)
    app = create_app(settings=settings, paths=paths, store=store, backend=engine, model_info=info)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await screen.open_conversation(None)
        screen.query_one(ChatInput).insert(PROMPT)
        first_token_at: list[float] = []
        stream_reply = screen.session.stream_reply

        def timed(cancel: threading.Event | None = None) -> Iterator[ReplyEvent]:
            for event in stream_reply(cancel):
                if not first_token_at:
                    first_token_at.append(time.perf_counter())
                yield event

        screen.session.stream_reply = timed  # type: ignore[method-assign]
        # A person reads and types before pressing Enter: the app's start-up work (first layout,
        # the footer composing its keys) is done by then, and is not the reply's cost.
        await pilot.pause(SETTLE_S)
        started = time.perf_counter()
        await pilot.press("enter")
        while screen.replies_finished == 0:
            await asyncio.sleep(0.01)  # not pilot.pause: it walks every widget each time
        wall = time.perf_counter() - started
        (reply,) = [m for m in screen.session.messages() if m.role == "assistant"]
        assert reply.meta["completion_tokens"] == tokens, reply.meta
        rate = float(reply.meta["tokens_per_s"])
        draws = screen.stream_writes
    store.close()
    return rate, tokens / wall, draws, first_token_at[0] - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[600])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    models_dir = os.environ.get("HUOZI_TINY_MODELS_DIR") or tempfile.mkdtemp(prefix="tiny-")
    model = TinyModels(Path(models_dir)).get("merged", "q4_0", rig="loop")
    engine = LlamaEngine.load(model, LoadOptions(n_ctx=2048, n_gpu_layers=0))
    engine_alone(engine, 16)  # warm up: first-call allocations are not the comparison
    runs: dict[int, dict[str, list[float]]] = {
        n: {
            "engine": [],
            "engine_wall": [],
            "app": [],
            "app_wall": [],
            "draws": [],
            "first": [],
            "engine_first": [],
        }
        for n in args.tokens
    }
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(with_app(engine, 16, Path(tmp) / "warm-up"))  # imports, CSS, first layout
        for round_index in range(args.rounds):
            for tokens in args.tokens:
                seen = runs[tokens]
                rate, wall, ttft = engine_alone(engine, tokens)
                seen["engine"].append(rate)
                seen["engine_wall"].append(wall)
                seen["engine_first"].append(ttft)
                home = Path(tmp) / f"round-{round_index}-{tokens}"
                rate, wall, n_draws, first = asyncio.run(with_app(engine, tokens, home))
                seen["app"].append(rate)
                seen["app_wall"].append(wall)
                seen["draws"].append(n_draws)
                seen["first"].append(first)
    engine.close()
    print(f"rounds: {args.rounds}, engine and app alternating; medians")
    for tokens, seen in runs.items():
        median = {key: statistics.median(values) for key, values in seen.items()}
        print(f"\n{tokens} tokens per reply")
        print(
            f"  engine alone:   decode {median['engine']:8.1f} tok/s   "
            f"end-to-end {median['engine_wall']:8.1f} tok/s"
        )
        print(
            f"  app rendering:  decode {median['app']:8.1f} tok/s   "
            f"end-to-end {median['app_wall']:8.1f} tok/s"
        )
        print(f"  Markdown appends per streamed reply: {median['draws']:.0f}")
        print(
            f"  first token: {median['first'] * 1000:.1f} ms after Enter in the app, "
            f"{median['engine_first'] * 1000:.1f} ms after the call to the engine alone"
        )
        decode_pairs = [a / e for a, e in zip(seen["app"], seen["engine"], strict=True)]
        wall_pairs = [a / e for a, e in zip(seen["app_wall"], seen["engine_wall"], strict=True)]
        print(
            f"  ratio decode (app / engine):     {median['app'] / median['engine']:.3f}"
            f"  (median of per-round ratios {statistics.median(decode_pairs):.3f}; goal >= 0.95)"
        )
        print(
            f"  ratio end-to-end (app / engine): {median['app_wall'] / median['engine_wall']:.3f}"
            f"  (median of per-round ratios {statistics.median(wall_pairs):.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
