"""The chat app end to end with the real engine and the tiny huozi models (no fakes).

The 'chat' rig answers 你好，龘世界！ and stops; the 'loop' rig never stops, so Escape is the only
way its reply ends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import chat_ready, load_tiny, wait_for

from huozi_local.core.config import Paths, Settings
from huozi_local.core.loading.load import PlannedLoad
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import HuoziApp, create_app
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.widgets.chat_input import ChatInput

REPLY = "你好，龘世界！"


def _app(huozi_home: Path, model_file: Path, **settings: object) -> tuple[HuoziApp, PlannedLoad]:
    paths = Paths.from_env()
    chosen = Settings(n_ctx=2048, n_gpu_layers=0, temperature=0.0, **settings)  # type: ignore[arg-type]
    planned, loaded = load_tiny(model_file, chosen)
    info = loaded.info(planned)
    app = create_app(settings=chosen, paths=paths, backend=loaded.backend, model_info=info)
    return app, planned


def _chat(app: HuoziApp) -> ChatScreen:
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    return screen


def _transcript(screen: ChatScreen) -> list[tuple[str, str]]:
    return [(v.role, v.text) for v in screen.message_views()]


async def _send(pilot: object, screen: ChatScreen, text: str) -> None:
    prompt = screen.query_one(ChatInput)
    prompt.focus()
    prompt.insert(text)
    await pilot.press("enter")  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_reply_regenerate_and_reopen(huozi_home: Path, tiny_models: TinyModels) -> None:
    model = tiny_models.get("merged", "q4_0", rig="chat")
    app, _ = _app(huozi_home, model, model=str(model))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = _chat(app)
        await _send(pilot, screen, "你好，请自我介绍")
        await wait_for(
            pilot,
            lambda: not screen.replying and len(screen.message_views()) == 2,
            "the first reply",
        )
        assert _transcript(screen) == [("user", "你好，请自我介绍"), ("assistant", REPLY)]
        status = str(screen.query_one("#status").render())
        assert "tiny-huozi │ q4_0" in status and "/2048" in status and "tok/s" in status

        conversation_id = screen.session.conversation_id
        assert conversation_id is not None
        first_reply = screen.session.store.messages(conversation_id)[-1]
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.replies_finished == 2, "the regenerated reply")
        assert _transcript(screen) == [("user", "你好，请自我介绍"), ("assistant", REPLY)]
        regenerated = screen.session.store.messages(conversation_id)
        assert len(regenerated) == 2 and regenerated[-1].id != first_reply.id
        await pilot.press("ctrl+q")

    # A later run: no backend handed in, so the app loads Settings.model itself and shows the chat.
    store = ConversationStore.open(Paths.from_env().database_file)
    assert [m.content for m in store.messages(conversation_id)] == ["你好，请自我介绍", REPLY]
    reopened = create_app(
        settings=Settings(model=str(model), n_ctx=2048, n_gpu_layers=0, temperature=0.0),
        store=store,
    )
    async with reopened.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: chat_ready(reopened), "the chat screen")
        screen = _chat(reopened)
        await wait_for(pilot, lambda: len(screen.message_views()) == 2, "the saved messages")
        assert _transcript(screen) == [("user", "你好，请自我介绍"), ("assistant", REPLY)]
        assert screen.session.conversation_id == conversation_id
    store.close()


@pytest.mark.slow
async def test_escape_stops_a_reply_that_never_ends(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    model = tiny_models.get("merged", "q4_0", rig="loop")
    app, _ = _app(huozi_home, model, max_tokens=100_000)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = _chat(app)
        await _send(pilot, screen, "讲个故事")
        await wait_for(
            pilot,
            lambda: (
                len(screen.message_views()) == 2
                and screen.message_views()[1].text.count("世界") >= 3
            ),
            "streamed text",
        )
        assert screen.replying
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.replying, "the reply to stop")
        (_user, reply) = screen.message_views()
        assert reply.text.startswith(REPLY) and reply.text.count("世界") >= 3
        assert "stopped" in reply.note
        stored = screen.session.store.messages(screen.session.conversation_id or -1)
        assert stored[-1].content == reply.text
        assert stored[-1].meta["stop_reason"] == "cancelled"

        # Regenerate replaces the stopped reply; stop it again mid-way.
        await pilot.press("ctrl+r")
        await wait_for(
            pilot,
            lambda: (
                screen.replying
                and len(screen.message_views()) == 2
                and "世界" in screen.message_views()[1].text
            ),
            "the regenerated stream",
        )
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.replying, "the second stop")
        stored = screen.session.store.messages(screen.session.conversation_id or -1)
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[-1].content == screen.message_views()[1].text


@pytest.mark.slow
async def test_edit_and_resend_the_last_message(huozi_home: Path, tiny_models: TinyModels) -> None:
    model = tiny_models.get("merged", "q4_0", rig="chat")
    app, _ = _app(huozi_home, model)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = _chat(app)
        await _send(pilot, screen, "第一版问题")
        await wait_for(
            pilot, lambda: not screen.replying and len(screen.message_views()) == 2, "the reply"
        )
        await pilot.press("f3")
        prompt = screen.query_one(ChatInput)
        assert prompt.text == "第一版问题"
        prompt.clear()
        prompt.insert("第二版")
        await pilot.press("ctrl+j")
        prompt.insert("问题")
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: (
                not screen.replying
                and len(screen.message_views()) == 2
                and screen.message_views()[0].text == "第二版\n问题"
            ),
            "the resent reply",
        )
        stored = screen.session.store.messages(screen.session.conversation_id or -1)
        assert [(m.role, m.content) for m in stored] == [
            ("user", "第二版\n问题"),
            ("assistant", REPLY),
        ]


@pytest.mark.slow
async def test_sidebar_new_rename_search_delete_and_export(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    model = tiny_models.get("merged", "q4_0", rig="chat")
    app, _ = _app(huozi_home, model)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = _chat(app)
        sidebar = screen.query_one("#sidebar")
        await _send(pilot, screen, "关于长城")
        await wait_for(
            pilot, lambda: not screen.replying and len(screen.message_views()) == 2, "first reply"
        )
        first = screen.session.conversation_id
        await pilot.press("ctrl+n")
        assert screen.message_views() == []
        await _send(pilot, screen, "关于黄河")
        await wait_for(
            pilot, lambda: not screen.replying and len(screen.message_views()) == 2, "second reply"
        )
        second = screen.session.conversation_id
        assert sidebar.shown_ids == [second, first]  # type: ignore[attr-defined]

        await pilot.press("f2")
        rename = app.screen.query_one("#answer")
        rename.value = "黄河之水"  # type: ignore[attr-defined]
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: screen.session.store.conversation(second or -1).title == "黄河之水",
            "the rename",
        )

        search = screen.query_one("#search")
        search.focus()
        await pilot.press(*"长城")
        await wait_for(pilot, lambda: sidebar.shown_ids == [first], "search results")  # type: ignore[attr-defined]

        await pilot.press("ctrl+o")
        exported = huozi_home / "data" / "exports" / f"conversation-{second}.md"
        await wait_for(pilot, exported.exists, "the Markdown export")
        assert "# 黄河之水" in exported.read_text(encoding="utf-8")
        assert REPLY in exported.read_text(encoding="utf-8")

        await pilot.press("f8")
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: [c.id for c in screen.session.store.list_conversations()] == [first],
            "the delete",
        )
        assert screen.session.conversation_id == first
