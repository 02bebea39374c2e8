"""Widgets in tiny host apps, and the app's answer to an unreadable database."""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from tui_helpers import wait_for

from huozi_local.core.config import Paths, Settings
from huozi_local.core.store.conversations import Conversation, ConversationStore
from huozi_local.tui.app import create_app
from huozi_local.tui.screens.reply_stream import PendingText
from huozi_local.tui.session import ModelInfo, ReplyStats
from huozi_local.tui.widgets.chat_input import ChatInput
from huozi_local.tui.widgets.conversation_list import ConversationList
from huozi_local.tui.widgets.message_view import MessageView
from huozi_local.tui.widgets.status_bar import StatusBar, status_text


class InputHost(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def compose(self) -> ComposeResult:
        yield ChatInput(id="prompt")

    def on_chat_input_submitted(self, message: ChatInput.Submitted) -> None:
        self.sent.append(message.text)


async def test_enter_sends_and_ctrl_j_or_shift_enter_insert_newlines() -> None:
    app = InputHost()
    async with app.run_test() as pilot:
        prompt = app.query_one(ChatInput)
        prompt.focus()
        await pilot.press(*"你好")  # printable CJK keys, as an IME delivers them
        await pilot.press("ctrl+j")
        await pilot.press(*"世界")
        await pilot.press("shift+enter")
        await pilot.press(*"!")
        assert prompt.text == "你好\n世界\n!"
        assert app.sent == []
        await pilot.press("enter")
        assert app.sent == ["你好\n世界\n!"]


async def test_enter_on_blank_text_sends_nothing() -> None:
    app = InputHost()
    async with app.run_test() as pilot:
        app.query_one(ChatInput).focus()
        await pilot.press("ctrl+j", "space", "enter")
        assert app.sent == []


class MessageHost(App[None]):
    def compose(self) -> ComposeResult:
        yield MessageView("assistant")


async def test_message_view_streams_then_renders_once_in_full() -> None:
    app = MessageHost()
    async with app.run_test() as pilot:
        view = app.query_one(MessageView)
        view.start_stream()
        for piece in ["**活字**", "是一个", "中文", "大模型。"]:
            await view.write(piece)
        assert view.streaming and view.text == "**活字**是一个中文大模型。"
        await view.finish("**活字**是一个中文大模型。", note="（已停止 stopped）")
        await pilot.pause()
        assert not view.streaming
        assert view.markdown.source == "**活字**是一个中文大模型。"
        assert view.query_one(".note").display
        view.focus()
        await pilot.press("y")
        assert app.clipboard == "**活字**是一个中文大模型。"


class ListHost(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.chosen: list[int] = []
        self.searched: list[str] = []

    def compose(self) -> ComposeResult:
        yield ConversationList()

    def on_conversation_list_selected(self, message: ConversationList.Selected) -> None:
        self.chosen.append(message.conversation_id)

    def on_conversation_list_search_changed(self, message: ConversationList.SearchChanged) -> None:
        self.searched.append(message.query)


async def test_conversation_list_shows_selects_and_reports_search() -> None:
    app = ListHost()
    async with app.run_test() as pilot:
        sidebar = app.query_one(ConversationList)
        await sidebar.show([Conversation(7, "长城", "", 0, 0), Conversation(3, "", "", 0, 0)], 3)
        assert sidebar.shown_ids == [7, 3]
        listing = app.query_one("#conversations")
        listing.focus()
        await pilot.press("up", "enter")
        assert app.chosen == [7]
        app.query_one("#search").focus()
        await pilot.press(*"黄河")
        assert app.searched[-1] == "黄河"


def test_status_text_says_model_quant_layers_context_and_speed() -> None:
    model = ModelInfo("huozi3", "q2_k", 16, 4096)
    assert (
        status_text(model, ReplyStats()) == "huozi3 │ q2_k │ GPU layers 16 │ ctx 0/4096 │ – tok/s"
    )
    busy = status_text(model, ReplyStats(1234, 18.26), "生成中")
    assert busy == "huozi3 │ q2_k │ GPU layers 16 │ ctx 1234/4096 │ 18.3 tok/s │ 生成中"
    moe = ModelInfo("huozi3", "q4_0", 33, 8192, n_cpu_moe=20)
    assert "│ GPU layers 33 (experts of 20 in RAM) │" in status_text(moe, ReplyStats())
    remote = ModelInfo("huozi3:q4_0", n_ctx=4096, location="remote")
    assert status_text(remote, ReplyStats()).startswith("huozi3:q4_0 │ remote │ ctx 0/4096")
    assert StatusBar is not None


def test_pending_text_asks_for_one_wakeup_per_batch() -> None:
    pending = PendingText()
    assert pending.add("你") is True
    assert pending.add("好") is False  # a wake-up is already queued: no second message
    assert pending.take() == "你好"
    assert pending.take() == ""
    assert pending.add("！") is True


async def test_corrupt_database_opens_the_app_with_a_notice_and_a_backup(
    huozi_home: Path,
) -> None:
    paths = Paths.from_env()
    paths.data_dir.mkdir(parents=True)
    paths.database_file.write_bytes(b"\x00garbage, not SQLite\x00" * 100)
    store = ConversationStore.open(paths.database_file)
    app = create_app(settings=Settings(), paths=paths, store=store)
    async with app.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: bool(app._notifications), "the notice")
        (notice,) = [n.message for n in app._notifications if "unreadable" in n.message]
        (backup,) = paths.data_dir.glob("huozi.sqlite3.corrupt-*")
        assert str(backup) in notice
        assert backup.read_bytes() == b"\x00garbage, not SQLite\x00" * 100
    store.close()


async def test_settings_estimate_follows_gpu_layers_and_save_persists(
    huozi_home: Path, tiny_models: object
) -> None:
    import shutil

    from textual.widgets import Input, Static

    from huozi_local.core.planning.hardware import Machine
    from huozi_local.tui.options import AppOptions
    from huozi_local.tui.screens.settings import SettingsScreen

    paths = Paths.from_env()
    installed = paths.models_dir / "huozi3" / "huozi3-q2_k.gguf"
    installed.parent.mkdir(parents=True)
    shutil.copyfile(tiny_models.get("merged", "q4_0", rig="chat"), installed)  # type: ignore[attr-defined]
    store = ConversationStore.open(paths.database_file)
    gpu = AppOptions(machine_probe=lambda: Machine.synthetic("cuda", 8 * 1024**3, 32 * 1024**3))
    settings = Settings(model="huozi3:q2_k", n_ctx=2048, n_gpu_layers=0)
    app = create_app(settings=settings, paths=paths, store=store, options=gpu)
    async with app.run_test(size=(110, 50)) as pilot:
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ChatScreen", "the chat")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        estimate = app.screen.query_one("#estimate", Static)
        assert "for 0 GPU layers" in str(estimate.render())
        layers = app.screen.query_one("#n_gpu_layers", Input)
        layers.value = "3"
        await pilot.pause()
        assert "for 3 GPU layers" in str(estimate.render())
        app.screen.query_one("#temperature", Input).value = "0.7"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen), "saving")
    saved = Settings.load(paths.config_file)
    assert (saved.temperature, saved.n_gpu_layers) == (0.7, 3)
    store.close()


async def test_settings_estimate_follows_moe_layers_in_ram_and_save_persists(
    huozi_home: Path, tiny_models: object
) -> None:
    import shutil

    from textual.widgets import Input, Static

    from huozi_local.core.planning.hardware import Machine
    from huozi_local.tui.options import AppOptions
    from huozi_local.tui.screens.settings import SettingsScreen

    paths = Paths.from_env()
    installed = paths.models_dir / "huozi3" / "huozi3-q2_k.gguf"
    installed.parent.mkdir(parents=True)
    shutil.copyfile(tiny_models.get("merged", "q4_0", rig="chat"), installed)  # type: ignore[attr-defined]
    store = ConversationStore.open(paths.database_file)
    gpu = AppOptions(machine_probe=lambda: Machine.synthetic("cuda", 8 * 1024**3, 32 * 1024**3))
    settings = Settings(model="huozi3:q2_k", n_ctx=2048)
    app = create_app(settings=settings, paths=paths, store=store, options=gpu)
    async with app.run_test(size=(110, 50)) as pilot:
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ChatScreen", "the chat")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        estimate = app.screen.query_one("#estimate", Static)
        moe = app.screen.query_one("#cpu_moe", Input)
        assert moe.value == "auto" and "in RAM)" not in str(estimate.render())
        before = str(estimate.render())
        moe.value = "1"
        await pilot.pause()
        after = str(estimate.render())
        assert "(experts of 1 in RAM)" in after
        assert after.split("RAM ")[-1] != before.split("RAM ")[-1]  # the experts moved to RAM
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen), "saving")
    assert Settings.load(paths.config_file).cpu_moe == 1
    store.close()
