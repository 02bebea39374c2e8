"""The app shows text from a person, a model file or a server as it is, never as markup.

A server's model id holding `[/INST]` crashed the app at start (the status bar parsed it); a
model file whose name holds `[b]` lost the tag in the loading title, the failure dialog, the
status bar and the settings' model choice; a conversation titled `[/INST]` crashed the delete
dialog. Driven through the real screens (Pilot), the real engine and our real server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Label, Markdown, Select, Static
from tui_helpers import LoaderFailingOnce, chat_ready, send_and_wait, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_server import running_server
from odd_text import ODD, with_odd_header

from huozi_local.commands.app import _build
from huozi_local.core.chat.engine import LlamaEngine
from huozi_local.core.chat.loader import LoadOptions
from huozi_local.core.config import Paths, Settings
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import HuoziApp, create_app
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.dialogs import Confirm
from huozi_local.tui.screens.settings import SettingsScreen
from huozi_local.tui.widgets.status_bar import StatusBar

pytestmark = pytest.mark.slow

ODD_ID = f"huozi3:{ODD}"


@pytest.fixture(scope="module")
def odd_model(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model, its general.name holding markup, in a file whose name does too."""
    src = tiny_models.get("merged", "q4_0", rig="chat")
    return with_odd_header(src, tmp_path_factory.mktemp("odd") / "tiny-[b]x.gguf")


@pytest.fixture(scope="module")
def odd_server(odd_model: Path) -> Iterator[str]:
    engine = LlamaEngine.load(odd_model, LoadOptions(n_ctx=512))
    try:
        with running_server(engine, model_id=ODD_ID) as server:
            yield server.url
    finally:
        engine.close()


def shown(widget: Static) -> str:
    """The text a widget draws (its markup, if it was read as markup, gone)."""
    return str(widget.render())


async def paragraphs_of_last_user_message(app: HuoziApp) -> str:
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    view = [v for v in screen.message_views() if v.role == "user"][-1]
    return "\n".join(shown(block) for block in view.query_one(Markdown).query(Static))


async def delete_dialog_text(app: HuoziApp, pilot: object, title: str) -> str:
    """The delete dialog's question for the open conversation, renamed to `title`."""
    screen = app.screen
    assert isinstance(screen, ChatScreen) and screen.session.conversation_id is not None
    screen.session.store.rename_conversation(screen.session.conversation_id, title)
    await pilot.press("f8")  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: isinstance(app.screen, Confirm), "the delete dialog")  # type: ignore[arg-type]
    text = shown(app.screen.query_one(Label))
    await pilot.press("escape")  # type: ignore[attr-defined]
    return text


async def test_app_with_a_remote_model_id_in_brackets_starts_and_shows_it_verbatim(
    huozi_home: Path, odd_server: str
) -> None:
    paths = Paths.from_env()
    store = ConversationStore.open(paths.database_file)
    args = argparse.Namespace(endpoint=odd_server, api_key=None, model=None, cpu_moe=None)
    app = _build(args, paths, Settings(temperature=0.0), store)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        assert shown(app.screen.query_one(StatusBar)).startswith(f"{ODD_ID} │ remote")
        await send_and_wait(pilot, app, f"answer in {ODD} format")
        assert await paragraphs_of_last_user_message(app) == f"answer in {ODD} format"
        assert await delete_dialog_text(app, pilot, ODD) == f"Delete “{ODD}”?"
    store.close()


async def test_app_with_a_model_file_named_in_brackets_shows_the_name_verbatim(
    huozi_home: Path, odd_model: Path
) -> None:
    """The name is shown while loading, in the failure dialog of a loader that raised, in the
    status bar and among the settings' models."""
    name = odd_model.name
    fails_once = LoaderFailingOnce(RuntimeError(f"llama.cpp said {ODD}"))

    app = create_app(settings=Settings(model=str(odd_model), temperature=0.0), loader=fails_once)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: type(app.screen).__name__ == "WorkerFailed", "the dialog")
        assert shown(app.screen.query_one("#failed-title", Label)).endswith(f"loading {name}")
        assert shown(app.screen.query_one("#failed-message", Label)).endswith(ODD)
        loading = app.screen_stack[-2]
        assert shown(loading.query_one("#loading-title", Label)).endswith(f"Loading {name}")
        await pilot.click("#retry")
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        assert shown(app.screen.query_one(StatusBar)).startswith(f"{name} │ ")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        choice = app.screen.query_one("#model", Select)
        assert shown(choice.query_one("#label", Static)) == str(odd_model)
    assert [p.label for p in fails_once.attempts] == [name, name]
