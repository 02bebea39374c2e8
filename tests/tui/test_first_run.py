"""First run end to end: plan -> download from a fake hub -> repair -> load -> chat -> reopen.

The hub is tests/hub_server.py on 127.0.0.1, spoken to by the real huggingface_hub client; the
file it serves is a tiny huozi model in the official files' pre-2024 split-expert layout, so the
real repair runs too. The machine is a described one (Machine.synthetic), so the plan is the same
on every computer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tui_helpers import chat_ready, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub_server import running_hub

from huozi_local.core.config import Paths, Settings
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.testing.tiny_model import TinyModels
from huozi_local.tui.app import create_app
from huozi_local.tui.options import AppOptions
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.setup import SetupScreen
from huozi_local.tui.widgets.chat_input import ChatInput

GIB = 1024**3
HUOZI_REPO = "HIT-SCIR/huozi3-gguf"


def gaming_gpu() -> Machine:
    return Machine.synthetic("cuda", 24 * GIB, 64 * GIB)


@pytest.mark.slow
async def test_first_run_downloads_repairs_loads_and_chats(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    paths = Paths.from_env()
    with running_hub() as hub:
        hub.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", legacy)
        options = AppOptions(endpoint=hub.hub_url, machine_probe=gaming_gpu)
        # Greedy sampling: the tiny rig's text is certain only then (at 0.2 a rare first token
        # can slip in), and the setting must survive into the next run's config.
        app = create_app(settings=Settings(temperature=0.0), options=options)
        async with app.run_test(size=(110, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, SetupScreen), "the setup screen")
            setup = app.screen
            assert isinstance(setup, SetupScreen)
            # 24 GB of VRAM: q2_k fits entirely on the GPU, q4_0 only partly.
            assert setup.report.recommended is not None
            assert setup.report.recommended.quant == "q2_k"
            verdicts = {o.quant: o.verdict for o in setup.report.options}
            assert verdicts == {"q4_0": "partial", "q2_k": "fits"}
            assert "all 32 layers" in setup.report.recommendation
            # Sizes as the hub lists them (17.4 GB), not 16.2 GiB
            # Repaired as it arrives: the peak is the file itself, never two copies.
            assert "Disk: needs 17.4 GB at peak (download 17.4 GB, repaired as it arrives)" in (
                setup.report.disk_line
            )

            await pilot.press("enter")  # choose the highlighted (recommended) quant
            await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
            assert setup.stages_seen == ["download", "verify"]  # no separate repair pass
            chat = app.screen
            assert isinstance(chat, ChatScreen)
            assert chat.session.model.label == "huozi3" and chat.session.model.quant == "q2_k"
            prompt = chat.query_one(ChatInput)
            await wait_for(pilot, lambda: prompt.has_focus, "the message box to take focus")
            prompt.insert("你好")
            await pilot.press("enter")
            await wait_for(pilot, lambda: chat.replies_finished == 1, "the first reply")
            assert [v.text for v in chat.message_views()] == ["你好", "你好，龘世界！"]

    # The next run opens the chat with the same model directly: no hub, no setup.
    saved = Settings.load(paths.config_file)
    assert (saved.model, saved.temperature) == ("huozi3:q2_k", 0.0)
    store = ConversationStore.open(paths.database_file)
    again = create_app(store=store, options=AppOptions(machine_probe=gaming_gpu))
    async with again.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: chat_ready(again), "the chat screen")
        reopened = again.screen
        assert isinstance(reopened, ChatScreen)
        await wait_for(pilot, lambda: len(reopened.message_views()) == 2, "the saved conversation")
        assert [v.text for v in reopened.message_views()] == ["你好", "你好，龘世界！"]
    store.close()
