"""First run, interrupted: Cancel mid-download keeps the bytes, and downloading again resumes them.

The fake hub holds the file body until the test has pressed Cancel, then lets a bounded slice
through: the cancel is certain to land mid-transfer on any machine, with no clock involved. The
second attempt must ask the hub for the rest with a Range request, and what it assembles must
repair, load and chat like an uninterrupted download.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from textual.widgets import Button, Label
from tui_helpers import chat_ready, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub_server import FakeHub, running_hub

from huozi_local.core.config import Paths, Settings
from huozi_local.core.fetch.in_place import InPlaceFiles
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    installed_models,
)
from huozi_local.core.planning.hardware import Machine
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels
from huozi_local.tui.app import create_app
from huozi_local.tui.options import AppOptions
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.setup import SetupScreen
from huozi_local.tui.widgets.chat_input import ChatInput

GIB = 1024**3
HUOZI_REPO = "HIT-SCIR/huozi3-gguf"
FILENAME = "huozi3-q2_k.gguf"


@dataclass
class HeldHub(FakeHub):
    """A hub whose first file body waits for `release`, then sends only `first_slice` bytes."""

    body_requested: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    first_slice: int = 1 << 20

    def take_cut(self) -> int | None:
        if self.body_requested.is_set():
            return super().take_cut()
        self.body_requested.set()
        self.release.wait(timeout=300)
        return self.first_slice


def gaming_gpu() -> Machine:
    return Machine.synthetic("cuda", 24 * GIB, 64 * GIB)


def _stage(setup: SetupScreen) -> str:
    return str(setup.query_one("#stage", Label).render())


@pytest.mark.slow
async def test_cancelled_download_resumes_and_chats(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    size = legacy.stat().st_size
    paths = Paths.from_env()
    final = family_model_path(paths, "huozi3", "q2_k")
    files = InPlaceFiles(final)
    said: list[str] = []

    def listen(message: object) -> None:
        from textual.notifications import Notify

        if isinstance(message, Notify):
            said.append(message.notification.message)

    hub = HeldHub()
    with running_hub(hub):
        hub.add_file(HUOZI_REPO, FILENAME, legacy)
        options = AppOptions(endpoint=hub.hub_url, machine_probe=gaming_gpu)
        app = create_app(settings=Settings(temperature=0.0), options=options)
        try:
            async with app.run_test(size=(110, 40), message_hook=listen) as pilot:
                await wait_for(
                    pilot, lambda: isinstance(app.screen, SetupScreen), "the setup screen"
                )
                setup = app.screen
                assert isinstance(setup, SetupScreen)
                assert setup.query_one("#cancel", Button).disabled  # nothing to cancel yet

                await pilot.press("enter")  # the recommended quant: q2_k
                await wait_for(pilot, hub.body_requested.is_set, "the download to start")
                assert not setup.query_one("#cancel", Button).disabled
                await pilot.click("#cancel")
                assert setup.cancel_event is not None and setup.cancel_event.is_set()
                hub.release.set()
                await wait_for(pilot, lambda: setup.cancel_event is None, "the download to stop")

                # Paused, not finished: the first bytes kept beside it, nothing loadable.
                assert "Paused" in _stage(setup)
                await wait_for(  # the notice is its own message: it may come a frame later
                    pilot,
                    lambda: any(m.startswith("cancelled: download cancelled with") for m in said),
                    "the pause notice",
                )
                kept = files.held_bytes()  # the first megabytes, beside the final name
                assert 0 < kept < size
                before = len(hub.requests_for("GET", "/lfs/"))
                assert not final.exists() and installed_models(paths) == []
                assert Settings.load(paths.config_file).model == ""
                assert isinstance(app.screen, SetupScreen)
                assert not setup.query_one("#start", Button).disabled

                await pilot.click("#start")  # download again
                await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
                resumed = hub.requests_for("GET", "/lfs/")[before:]
                # the first megabyte was not asked for again
                assert resumed and all(not str(r.range).startswith("bytes=0-") for r in resumed)
                assert not any(p.exists() for p in files.all()) and final.exists()
                assert setup.stages_seen == ["download", "verify"]
                assert Settings.load(paths.config_file).model == "huozi3:q2_k"

                chat = app.screen
                assert isinstance(chat, ChatScreen)
                prompt = chat.query_one(ChatInput)
                await wait_for(pilot, lambda: prompt.has_focus, "the message box to take focus")
                prompt.insert("你好")
                await pilot.press("enter")
                await wait_for(pilot, lambda: chat.replies_finished == 1, "the first reply")
                assert [(v.role, v.text) for v in chat.message_views()] == [
                    ("user", "你好"),
                    ("assistant", RIG_TEXT),
                ]
        finally:
            hub.release.set()  # never leave a server thread waiting if the test failed early
