"""The app keeps the KV state of the conversations it leaves: switching back, or reopening one
after a restart, answers without evaluating its history again (the real app, engine, store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot
from tui_helpers import chat_ready, send_and_wait, wait_for

from huozi_local.core.config import Paths, Settings
from huozi_local.core.loading.cache import prompt_cache_folder
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.conversations import CONVERSATIONS
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import HuoziApp, create_app
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.widgets.conversation_list import ConversationList

pytestmark = pytest.mark.slow


def long_conversation(store: ConversationStore, index: int) -> int:
    """A saved conversation of a few hundred tokens, written the project's own way."""
    conversation = CONVERSATIONS[index]
    made = store.create_conversation(title=conversation.category)
    for turn in range(8):
        question = conversation.turns[turn % 2]
        store.add_message(made.id, "user", f"{question}（第{turn}轮）")
        store.add_message(made.id, "assistant", "好的。" + question[::-1])
    return made.id


def chat(app: HuoziApp) -> ChatScreen:
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    return screen


async def say(pilot: Pilot[None], app: HuoziApp, text: str) -> dict[str, object]:
    """Send `text` in the open conversation; the stored reply's statistics."""
    screen = await send_and_wait(pilot, app, text)
    conversation_id = screen.session.conversation_id
    assert conversation_id is not None
    return screen.session.store.messages(conversation_id)[-1].meta


async def switch_to(pilot: Pilot[None], app: HuoziApp, conversation_id: int) -> None:
    """Choose a conversation in the sidebar, as a click or Enter there does."""
    screen = chat(app)
    screen.query_one(ConversationList).post_message(ConversationList.Selected(conversation_id))
    await wait_for(
        pilot, lambda: screen.session.conversation_id == conversation_id, "the other conversation"
    )


@pytest.fixture
def installed(huozi_home: Path, tiny_models: TinyModels) -> Paths:
    paths = Paths.from_env()
    model = paths.models_dir / "huozi3" / "huozi3-q4_0.gguf"
    model.parent.mkdir(parents=True)
    model.symlink_to(tiny_models.get("merged", "q4_0", rig="none"))
    return paths


def settings() -> Settings:
    return Settings(model="huozi3:q4_0", temperature=0.0, max_tokens=6)


async def test_switching_back_to_a_conversation_restores_it(installed: Paths) -> None:
    store = ConversationStore.open(installed.database_file)
    first = long_conversation(store, 0)
    second = long_conversation(store, 1)
    app = create_app(settings=settings(), paths=installed, store=store)
    async with app.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        await switch_to(pilot, app, first)
        opened = await say(pilot, app, "继续")
        assert opened["restored_prompt_tokens"] == 0  # nothing saved yet: evaluated
        await switch_to(pilot, app, second)
        await say(pilot, app, "继续")
        await switch_to(pilot, app, first)
        back = await say(pilot, app, "还有呢")
        prompt_tokens = int(str(back["prompt_tokens"]))
        assert int(str(back["restored_prompt_tokens"])) > prompt_tokens - 30
        assert int(str(back["evaluated_prompt_tokens"])) < 30
        await pilot.press("ctrl+q")
    store.close()


async def test_a_conversation_reopened_after_a_restart_is_restored_from_disk(
    installed: Paths,
) -> None:
    store = ConversationStore.open(installed.database_file)
    first = long_conversation(store, 2)
    app = create_app(settings=settings(), paths=installed, store=store)
    async with app.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        await switch_to(pilot, app, first)
        await say(pilot, app, "你好")
        await pilot.press("ctrl+q")  # quitting saves the open conversation
    assert any(prompt_cache_folder(installed).glob("*/*.kv"))

    again = create_app(settings=settings(), paths=installed, store=store)
    async with again.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: chat_ready(again), "the chat screen after a restart")
        await switch_to(pilot, again, first)
        reopened = await say(pilot, again, "再见")
        prompt_tokens = int(str(reopened["prompt_tokens"]))
        # everything up to the new message came from disk, the last reply's exact ids included
        assert int(str(reopened["restored_prompt_tokens"])) > prompt_tokens - 20
        await pilot.press("ctrl+q")
    store.close()
