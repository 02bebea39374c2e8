"""The app with `--endpoint`: a remote OpenAI-compatible server (our own, on 127.0.0.1, over the
real engine and the tiny 'chat' model), driven as a person would through the real screens."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import TextArea
from tui_helpers import chat_ready, send_and_wait, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_server import (
    A_GOOD_REPLY,
    RunningServer,
    chunk,
    event_stream,
    json_answer,
    running_server,
    scripted_server,
)

from huozi_local.commands.app import _build
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.chat.types import ChatMessage
from huozi_local.core.config import Paths, Settings
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.settings import SettingsScreen

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    model = tiny_models.get("merged", "q4_0", rig="chat")
    engine = LlamaEngine.load(model, LoadOptions(n_ctx=512))
    try:
        with running_server(engine, model_id="huozi3:q4_0") as server:
            yield server
    finally:
        engine.close()


async def test_a_system_prompt_changed_in_settings_reaches_the_remote_server(
    huozi_home: Path, chat_server: RunningServer
) -> None:
    """The remote backend kept the system prompt it was started with: after the person removed
    it in the settings, every reply still went out with the old one."""
    paths = Paths.from_env()
    store = ConversationStore.open(paths.database_file)
    args = argparse.Namespace(endpoint=chat_server.url, api_key=None, model=None, cpu_moe=None)
    settings = Settings(system_prompt="你是旧的助手", temperature=0.0)
    app = _build(args, paths, settings, store)
    sent = chat_server.backend.conversations
    async with app.run_test(size=(110, 50)) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")

        async def say(text: str) -> None:
            await send_and_wait(pilot, app, text)

        async def set_system_prompt(text: str) -> None:
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
            app.screen.query_one("#system_prompt", TextArea).text = text
            await pilot.pause()
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), "the chat again")

        await say("你好")
        assert sent[-1][0] == ChatMessage("system", "你是旧的助手")
        await set_system_prompt("")
        await say("再说一次")
        assert all(m.role != "system" for m in sent[-1])
        await set_system_prompt("你是新的助手")
        await say("还在吗")
        assert sent[-1][0] == ChatMessage("system", "你是新的助手")
        assert [m.role for m in sent[-1]].count("system") == 1
    store.close()


async def test_a_malformed_reply_is_one_notice_naming_the_server_and_the_chat_goes_on(
    huozi_home: Path,
) -> None:
    """A chunk whose 'choices' is a number used to kill the reply worker with a TypeError (the
    app's crash dialog); now the person is told which server sent what, and the next message
    gets its reply once the server sends one properly."""
    paths = Paths.from_env()
    store = ConversationStore.open(paths.database_file)
    with scripted_server([event_stream(chunk(choices=5)), A_GOOD_REPLY]) as url:
        args = argparse.Namespace(endpoint=url, api_key=None, model=None, cpu_moe=None)
        app = _build(args, paths, Settings(), store)
        async with app.run_test(size=(110, 50), notifications=True) as pilot:
            await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
            screen = await send_and_wait(pilot, app, "你好")
            notices = [str(n.message) for n in app._notifications]
            told = f"{url} sent a chunk whose 'choices' is a number: that is not the OpenAI API"
            assert any(n.startswith(told) for n in notices), notices
            assert not any("--" in n for n in notices)  # no command-line flag in the app
            await send_and_wait(pilot, app, "再说一次")
            transcript = [(v.role, v.text) for v in screen.message_views()]
            assert transcript == [("user", "你好"), ("user", "再说一次"), ("assistant", "你好！")]
    store.close()


async def test_regenerate_after_a_reply_that_fails_at_once_neither_crashes_nor_sticks(
    huozi_home: Path,
) -> None:
    """Ctrl+R runs as the app's action, not in the chat screen's queue: a reply that failed
    before its view was mounted ended (and cleared the view) in between, and the screen then
    started streaming into nothing (AttributeError in show_reply, the crash dialog)."""
    paths = Paths.from_env()
    store = ConversationStore.open(paths.database_file)
    refused = json_answer({"error": {"message": "overloaded"}}, status=503)
    with scripted_server([refused, refused, refused, A_GOOD_REPLY]) as url:
        args = argparse.Namespace(endpoint=url, api_key=None, model=None, cpu_moe=None)
        app = _build(args, paths, Settings(), store)
        async with app.run_test(size=(110, 50), notifications=True) as pilot:
            await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
            screen = await send_and_wait(pilot, app, "你好")
            for attempt in (2, 3, 4):

                def finished(count: int = attempt) -> bool:
                    return screen.replies_finished == count

                await pilot.press("ctrl+r")
                await wait_for(pilot, finished, f"regenerate {attempt}")
            transcript = [(v.role, v.text) for v in screen.message_views()]
            assert transcript == [("user", "你好"), ("assistant", "你好！")]
            assert app.screen is screen and not screen.replying
    store.close()
