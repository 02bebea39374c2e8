"""The README's picture of the chat screen, captured from the real app.

    python docs/capture_chat_screen.py      # writes docs/chat-screen.svg


What is real: the app, its screens and widgets, the conversation store (SQLite in a temporary
HUOZI_HOME), the keys pressed, and the model line of the status bar, which is the plan
huozi-local makes for huozi3 q4_0 on a described laptop (12 GiB NVIDIA GPU, 32 GiB of RAM,
8 cores). What is scripted: the reply's text, streamed by a backend that speaks the ChatBackend
protocol without a model (no weights live in this repository), so the status bar shows no speed
and no token counts for it rather than figures no model produced.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from huozi_local.core.catalog import get_family
from huozi_local.core.chat.types import (
    ChatMessage,
    ReplyEvent,
    ReplyResult,
    SamplingOptions,
    TextDelta,
)
from huozi_local.core.config import Paths, Settings
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.core.planning.planner import choose_plan
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.conversations import SHOWCASE_ANSWER, SHOWCASE_QUESTION
from huozi_local.tui.app import create_app
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.session import ModelInfo
from huozi_local.tui.widgets.chat_input import ChatInput

OUTPUT = Path(__file__).with_name("chat-screen.svg")
SIZE = (110, 34)
QUESTION, ANSWER = SHOWCASE_QUESTION, SHOWCASE_ANSWER
EARLIER = [
    ("旅行计划：去西安看兵马俑", "西安有什么好吃的？"),
    ("把这段话翻译成英文", "活字是一个中英双语的对话模型。"),
]


class ScriptedBackend:
    """Streams ANSWER in small pieces, as a model would; reports no speed and no token counts."""

    def __init__(self, model_name: str, n_ctx: int) -> None:
        self._name = model_name
        self._n_ctx = n_ctx

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        for start in range(0, len(ANSWER), 3):
            time.sleep(0.005)
            yield TextDelta(ANSWER[start : start + 3])
        yield ReplyResult(ANSWER, "stop", 0, 0, 0, 0.0, 0.0, self._name)

    def close(self) -> None:
        pass


async def capture(home: Path) -> Path:
    os.environ["HUOZI_HOME"] = str(home)
    paths = Paths.from_env()
    laptop = Machine.synthetic("cuda", 12 * GiB, 32 * GiB, cores=8)
    plan = choose_plan(get_family("huozi3"), laptop, quant="q4_0")
    store = ConversationStore.open(paths.database_file)
    for title, question in EARLIER:
        earlier = store.create_conversation(title=title)
        store.add_message(earlier.id, "user", question)
    backend = ScriptedBackend("huozi3", plan.n_ctx)
    info = ModelInfo("huozi3", "q4_0", plan.n_gpu_layers, plan.n_ctx, n_cpu_moe=plan.n_cpu_moe)
    app = create_app(
        settings=Settings(), paths=paths, store=store, backend=backend, model_info=info
    )
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await pilot.press("ctrl+n")
        prompt = screen.query_one(ChatInput)
        prompt.focus()
        prompt.insert(QUESTION)
        await pilot.press("enter")
        for _ in range(2000):
            if screen.replies_finished:
                break
            await pilot.pause(0.02)
        await pilot.press(*"再介绍一下")
        await pilot.pause()
        app.save_screenshot(str(OUTPUT.name), str(OUTPUT.parent))
    store.close()
    return OUTPUT


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="huozi-capture-") as home:
        written = asyncio.run(capture(Path(home)))
    print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
