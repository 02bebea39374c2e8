"""Does the chat screen slow generation down? Tokens/s with the app rendering vs the engine alone.

Both runs use the same loaded engine (the tiny huozi model, rig 'loop', which never stops by
itself, so every reply is exactly --tokens long), the same prompt and greedy sampling. The app runs
headless (App.run_test) and streams the reply through MarkdownStream exactly as on a terminal.
Rounds alternate engine/app so drift on a shared machine hits both. Goal: ratio >= 0.95.

    python benchmarks/bench_tui.py [--tokens 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.types import ChatMessage, SamplingOptions, collect_reply
from huozi_local.core.config import Paths, Settings
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import create_app
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.session import ModelInfo
from huozi_local.tui.widgets.chat_input import ChatInput

PROMPT = "请写一个很长的故事。"
SYSTEM = "你是一个智能助手"


def engine_alone(engine: LlamaEngine, tokens: int) -> tuple[float, float]:
    """(decode tokens/s as the engine measures it, wall-clock tokens/s of the whole reply)."""
    sampling = SamplingOptions(temperature=0.0, max_tokens=tokens)
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", PROMPT)]
    started = time.perf_counter()
    result = collect_reply(engine.stream_reply(messages, sampling))
    wall = time.perf_counter() - started
    assert result.completion_tokens == tokens, result
    return result.tokens_per_s, result.completion_tokens / wall


async def with_app(engine: LlamaEngine, tokens: int, home: Path) -> tuple[float, float, int]:
    """The same reply streamed into the chat screen; also how many draws (ReplyText) it took."""
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
        started = time.perf_counter()
        await pilot.press("enter")
        while screen.replies_finished == 0:
            await asyncio.sleep(0.05)  # not pilot.pause: it walks every widget each time
        wall = time.perf_counter() - started
        (reply,) = [m for m in screen.session.messages() if m.role == "assistant"]
        assert reply.meta["completion_tokens"] == tokens, reply.meta
        rate = float(reply.meta["tokens_per_s"])
        draws = screen.stream_writes
    store.close()
    return rate, tokens / wall, draws


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models_dir = os.environ.get("HUOZI_TINY_MODELS_DIR") or tempfile.mkdtemp(prefix="tiny-")
    model = TinyModels(Path(models_dir)).get("merged", "q4_0", rig="loop")
    engine = LlamaEngine.load(model, n_ctx=2048, n_gpu_layers=0, system_prompt=None)
    engine_alone(engine, 16)  # warm up: first-call allocations are not the comparison
    engine_rates, engine_walls, app_rates, app_walls, draws = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            rate, wall = engine_alone(engine, args.tokens)
            engine_rates.append(rate)
            engine_walls.append(wall)
            home = Path(tmp) / f"round-{round_index}"
            rate, wall, n_draws = asyncio.run(with_app(engine, args.tokens, home))
            app_rates.append(rate)
            app_walls.append(wall)
            draws.append(n_draws)
    engine.close()
    e_rate, a_rate = statistics.median(engine_rates), statistics.median(app_rates)
    e_wall, a_wall = statistics.median(engine_walls), statistics.median(app_walls)
    print(f"tokens per reply: {args.tokens}, rounds: {args.rounds} (medians below)")
    print(f"engine alone:   decode {e_rate:8.1f} tok/s   end-to-end {e_wall:8.1f} tok/s")
    print(f"app rendering:  decode {a_rate:8.1f} tok/s   end-to-end {a_wall:8.1f} tok/s")
    print(f"Markdown appends per streamed reply: {statistics.median(draws):.0f}")
    print(f"ratio decode (app / engine):     {a_rate / e_rate:.3f}  (goal >= 0.95)")
    print(f"ratio end-to-end (app / engine): {a_wall / e_wall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
