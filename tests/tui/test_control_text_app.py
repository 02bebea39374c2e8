"""The app shows control characters from a file, a server, a reply or a saved title as escapes.

Textual drops only BEL, BS, VT, FF and CR from what it draws: an `ESC [2J` in a model file's
name, a server's model id or a reply (byte-fallback tokens produce ESC) went to the terminal as
it was, clearing the screen; an OSC 52 sequence wrote the person's clipboard. Driven through the
real screens (Pilot), the real engine and a real HTTP server; checked in the widgets' text and in
every cell the screen draws.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import Input, Label, Markdown, Select, Static, TextArea
from tui_helpers import LoaderFailingOnce, chat_ready, send_and_wait, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_server import chunk, event_stream, scripted_server
from odd_text import with_odd_header

from huozi_local.commands.app import _build
from huozi_local.core.config import Paths, Settings
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import create_app
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.dialogs import Confirm, TextPrompt
from huozi_local.tui.screens.settings import SettingsScreen
from huozi_local.tui.widgets.chat_input import ChatInput
from huozi_local.tui.widgets.conversation_list import ConversationItem
from huozi_local.tui.widgets.status_bar import StatusBar

pytestmark = pytest.mark.slow

RAW = "a\x1b[2J\x1b]52;c;aGk=\x07b"
"""Clears the screen, then writes "hi" to the clipboard (OSC 52, ended by BEL)."""
SHOWN = "a\\x1b[2J\\x1b]52;c;aGk=\\x07b"


@pytest.fixture(scope="module")
def esc_model(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model, its general.name holding RAW, in a file whose name does too."""
    src = tiny_models.get("merged", "q4_0", rig="chat")
    folder = tmp_path_factory.mktemp("esc")
    return with_odd_header(src, folder / f"tiny-{RAW}.gguf", name=f"tiny {RAW}")


def shown(widget: Static) -> str:
    return str(widget.render())


def drawn(app: App[None]) -> str:
    """Every character the current screen sends to the terminal."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


async def test_a_model_file_whose_name_holds_escapes_is_shown_with_them_visible(
    huozi_home: Path, esc_model: Path
) -> None:
    """The name while loading, in the failure dialog of a loader that raised (its message
    quoting it too), in the status bar and among the settings' models; config.toml's system
    prompt in the settings' editor, its line break kept."""
    name = esc_model.name
    name_shown = name.replace(RAW, SHOWN)
    fails_once = LoaderFailingOnce(RuntimeError(f"llama.cpp said {RAW}"))

    prompt = f"be brief {RAW}\nand kind"
    settings = Settings(model=str(esc_model), temperature=0.0, system_prompt=prompt)
    app = create_app(settings=settings, loader=fails_once)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: type(app.screen).__name__ == "WorkerFailed", "the dialog")
        assert shown(app.screen.query_one("#failed-title", Label)).endswith(f"loading {name_shown}")
        assert shown(app.screen.query_one("#failed-message", Label)).endswith(SHOWN)
        assert "\x1b" not in drawn(app)
        loading = app.screen_stack[-2]
        assert shown(loading.query_one("#loading-title", Label)).endswith(f"Loading {name_shown}")
        await pilot.click("#retry")
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        assert shown(app.screen.query_one(StatusBar)).startswith(f"{name_shown} │ ")
        assert "\x1b" not in drawn(app)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        choice = app.screen.query_one("#model", Select)
        assert shown(choice.query_one("#label", Static)) == str(esc_model).replace(RAW, SHOWN)
        assert app.screen.query_one("#system_prompt", TextArea).text == prompt.replace(RAW, SHOWN)
        assert "\x1b" not in drawn(app)
    assert [p.label for p in fails_once.attempts] == [name, name]


def paragraphs(view: object) -> list[str]:
    markdown = view.query_one(Markdown)  # type: ignore[attr-defined]
    return [shown(block) for block in markdown.query(Static) if shown(block)]


async def test_a_reply_a_title_and_a_path_holding_escapes_are_shown_with_them_visible(
    huozi_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply, its paragraphs still apart; the person's own message and title (pasted
    controls), also in the rename dialog and when the last message is edited; a notification
    naming a folder whose name holds them. (A server's model id or
    error message holding controls is already refused or cleaned by the remote backend.)"""
    reply = event_stream(
        chunk(
            choices=[
                {"index": 0, "delta": {"content": f"one {RAW}\n\ntwo"}, "finish_reason": "stop"}
            ]
        )
    )
    monkeypatch.setenv("HUOZI_HOME", str(tmp_path / f"home-{RAW}"))
    paths = Paths.from_env()
    store = ConversationStore.open(paths.database_file)
    with scripted_server(reply) as url:
        args = argparse.Namespace(endpoint=url, api_key=None, model=None, cpu_moe=None)
        app = _build(args, paths, Settings(), store)
        async with app.run_test(size=(160, 40), notifications=True) as pilot:
            await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
            screen = await send_and_wait(pilot, app, f"hi {RAW}")
            assert isinstance(screen, ChatScreen)
            user, assistant = screen.message_views()
            assert paragraphs(user) == [f"hi {SHOWN}"]
            assert paragraphs(assistant) == [f"one {SHOWN}", "two"]
            assert assistant.text == f"one {RAW}\n\ntwo"  # kept as sent: `y` copies this
            titles = [shown(item.query_one(Label)) for item in screen.query(ConversationItem)]
            assert titles == [f"hi {SHOWN}"]
            assert "\x1b" not in drawn(app)

            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: bool(app._notifications), "the export's notification")
            notice = str(list(app._notifications)[-1].message)
            assert notice.startswith("Exported to ") and f"home-{SHOWN}" in notice, notice
            assert "\x1b" not in drawn(app)

            assert screen.session.conversation_id is not None
            store.rename_conversation(screen.session.conversation_id, RAW)
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm), "the delete dialog")
            assert shown(app.screen.query_one(Label)) == f"Delete “{SHOWN}”?"
            assert "\x1b" not in drawn(app)
            await pilot.press("escape")

            await pilot.press("f2")
            await wait_for(pilot, lambda: isinstance(app.screen, TextPrompt), "the rename dialog")
            assert app.screen.query_one(Input).value == SHOWN
            assert "\x1b" not in drawn(app)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, "the chat again")
            await pilot.press("f3")
            assert screen.query_one(ChatInput).text == f"hi {SHOWN}"
            assert "\x1b" not in drawn(app)
    store.close()
