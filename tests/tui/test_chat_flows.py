"""Chat-screen flows around a reply: the status bar's figures, exporting, and switching models.

All with the real engine and the tiny rigged models: 'chat' answers RIG_TEXT and stops, 'loop'
repeats it until max tokens. What the app tells the person (its notifications) is read from the
messages it dispatches, so "the file is where the app says" is checked against the app's own words.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.message import Message
from textual.notifications import Notify
from textual.widgets import Input, Select
from tui_helpers import chat_ready, load_tiny, wait_for

from huozi_local.core.config import Paths, Settings
from huozi_local.core.fetch.model_folder import family_model_path
from huozi_local.core.loading.load import PlannedLoad
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.progress import ProgressCallback
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels
from huozi_local.tui.app import HuoziApp, create_app
from huozi_local.tui.model_choice import LoadedBackend, load_local
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.loading import LoadFinished
from huozi_local.tui.screens.settings import SettingsScreen
from huozi_local.tui.widgets.chat_input import ChatInput
from huozi_local.tui.widgets.message_view import MessageView

QUESTION = "你好，请介绍一下活字"
STATUS = re.compile(r"ctx (?P<used>\d+)/(?P<n_ctx>\d+) │ (?P<speed>\d+\.\d|–) tok/s")


class Heard:
    """Messages the app dispatched that a test cares about (run_test's message_hook)."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self._loads: list[LoadFinished] = []

    def __call__(self, message: Message) -> None:
        if isinstance(message, Notify):
            self.notices.append(message.notification.message)
        elif isinstance(message, LoadFinished) and message.loaded is not None:
            self._count_load(message)

    def _count_load(self, message: LoadFinished) -> None:
        # It bubbles from the loading screen to the app: the hook sees it twice.
        if all(message is not seen for seen in self._loads):
            self._loads.append(message)

    @property
    def loads_finished(self) -> int:
        return len(self._loads)

    def exported(self) -> list[Path]:
        prefix = "Exported to "
        return [Path(n.removeprefix(prefix)) for n in self.notices if n.startswith(prefix)]


class RecordingLoader:
    """The app's real loader, noting which file each load opened and where it put the layers."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.placements: list[tuple[int, int]] = []

    def __call__(
        self,
        planned: PlannedLoad,
        machine: Machine,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> LoadedBackend:
        loaded = load_local(planned, machine, progress, cancel)
        self.paths.append(planned.model.path.resolve())
        self.placements.append((loaded.plan.n_gpu_layers, loaded.plan.n_cpu_moe))
        return loaded


def _app_with_engine(model_file: Path, **settings: object) -> HuoziApp:
    chosen = Settings(n_ctx=2048, n_gpu_layers=0, temperature=0.0, **settings)  # type: ignore[arg-type]
    planned, loaded = load_tiny(model_file, chosen)
    return create_app(settings=chosen, backend=loaded.backend, model_info=loaded.info(planned))


def _chat(app: HuoziApp) -> ChatScreen:
    screen = app.screen
    assert isinstance(screen, ChatScreen)
    return screen


async def _ask(pilot: object, screen: ChatScreen, text: str) -> None:
    finished = screen.replies_finished
    prompt = screen.query_one(ChatInput)
    prompt.focus()
    prompt.insert(text)
    await pilot.press("enter")  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: screen.replies_finished == finished + 1, f"a reply to {text}")  # type: ignore[arg-type]


def _status(screen: ChatScreen) -> re.Match[str]:
    text = str(screen.query_one("#status").render())
    match = STATUS.search(text)
    assert match is not None, text
    return match


@pytest.mark.slow
async def test_status_bar_shows_context_used_and_speed_after_a_reply(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    app = _app_with_engine(tiny_models.get("merged", "q4_0", rig="chat"))
    async with app.run_test(size=(110, 30)) as pilot:
        screen = _chat(app)
        before = _status(screen)
        assert (before["used"], before["n_ctx"], before["speed"]) == ("0", "2048", "–")

        await _ask(pilot, screen, QUESTION)
        after = _status(screen)
        conversation_id = screen.session.conversation_id
        assert conversation_id is not None
        reply = screen.session.store.messages(conversation_id)[-1]
        assert reply.content == RIG_TEXT
        # Context used is the prompt plus the reply, out of the loaded model's n_ctx.
        used = reply.meta["prompt_tokens"] + reply.meta["completion_tokens"]
        assert int(after["used"]) == used and 0 < used < 2048
        assert int(after["n_ctx"]) == app.backend.n_ctx == 2048  # type: ignore[union-attr]
        assert after["speed"] != "–" and float(after["speed"]) > 0


@pytest.mark.slow
async def test_status_bar_shows_the_context_llama_cpp_really_has(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    """llama.cpp pads n_ctx to a multiple of 256: 1000 asked for is 1024 had, and 1024 is shown."""
    paths = Paths.from_env()
    installed = family_model_path(paths, "huozi3", "q4_0")
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.symlink_to(tiny_models.get("merged", "q4_0", rig="chat"))
    settings = Settings(model="huozi3:q4_0", n_ctx=1000, n_gpu_layers=0, temperature=0.0)
    app = create_app(settings=settings)  # through the loading screen, as a person opens it
    async with app.run_test(size=(110, 30)) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        bar = _chat(app).query_one("#status")
        await wait_for(pilot, lambda: bool(STATUS.search(str(bar.render()))), "the status bar")
        status = _status(_chat(app))
        assert app.backend is not None and app.backend.n_ctx == 1024
        assert int(status["n_ctx"]) == 1024


@pytest.mark.slow
async def test_export_markdown_by_key_and_json_from_the_palette(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    heard = Heard()
    app = _app_with_engine(tiny_models.get("merged", "q4_0", rig="chat"))
    exports = Paths.from_env().data_dir / "exports"
    async with app.run_test(size=(110, 30), message_hook=heard) as pilot:
        screen = _chat(app)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "Nothing to export yet" in heard.notices, "the refusal")
        assert not exports.exists()

        await _ask(pilot, screen, QUESTION)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: len(heard.exported()) == 1, "the Markdown export")
        markdown_file = heard.exported()[0]
        assert markdown_file.parent == exports and markdown_file.suffix == ".md"
        markdown = markdown_file.read_text(encoding="utf-8")
        assert f"## 用户 User\n\n{QUESTION}\n" in markdown
        assert f"## 助手 Assistant\n\n{RIG_TEXT}\n" in markdown
        assert markdown.index(QUESTION) < markdown.index(RIG_TEXT)

        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        await pilot.press(*"json")
        commands = app.screen.query_one(CommandList)
        await wait_for(
            pilot,
            lambda: (
                commands.highlighted is not None
                and "Export as JSON"
                in str(commands.get_option_at_index(commands.highlighted).prompt)
            ),
            "the JSON export command",
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(heard.exported()) == 2, "the JSON export")
        json_file = heard.exported()[1]
        assert json_file.parent == exports and json_file.suffix == ".json"
        raw = json_file.read_text(encoding="utf-8")
        assert RIG_TEXT in raw  # Chinese as itself, not \u escapes
        document = json.loads(raw)
        assert document["id"] == screen.session.conversation_id
        assert [(m["role"], m["content"]) for m in document["messages"]] == [
            ("user", QUESTION),
            ("assistant", RIG_TEXT),
        ]
        assert document["messages"][1]["meta"]["stop_reason"] == "stop"


@pytest.mark.slow
async def test_switching_model_in_settings_reloads_and_is_saved(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    paths = Paths.from_env()
    answers = tiny_models.get("merged", "q4_0", rig="chat")
    loops = tiny_models.get("merged", "q2_k", rig="loop")
    for quant, source in (("q4_0", answers), ("q2_k", loops)):
        installed = family_model_path(paths, "huozi3", quant)
        installed.parent.mkdir(parents=True, exist_ok=True)
        installed.symlink_to(source)

    recording = RecordingLoader()
    loaded = recording.paths
    heard = Heard()
    settings = Settings(model="huozi3:q4_0", n_ctx=1024, n_gpu_layers=0, temperature=0.0)
    app = create_app(settings=settings, loader=recording)
    async with app.run_test(size=(110, 50), message_hook=heard) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        first = _chat(app)
        await _ask(pilot, first, "你好")
        assert first.message_views()[-1].text == RIG_TEXT
        assert loaded == [answers] and heard.loads_finished == 1

        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        dialog = app.screen
        model = dialog.query_one("#model", Select)
        assert model.value == "huozi3:q4_0"
        model.focus()
        await pilot.press("enter")  # open the list: q4_0 (current) then q2_k
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: model.value == "huozi3:q2_k", "the q2_k choice")
        max_tokens = dialog.query_one("#max_tokens", Input)
        max_tokens.focus()
        max_tokens.clear()
        await pilot.press(*"6")
        await pilot.press("ctrl+s")

        await wait_for(
            pilot, lambda: chat_ready(app) and app.screen is not first, "the reloaded chat"
        )
        assert loaded == [answers, loops] and heard.loads_finished == 2
        saved = Settings.load(paths.config_file)
        assert (saved.model, saved.max_tokens, saved.temperature) == ("huozi3:q2_k", 6, 0.0)

        second = _chat(app)
        assert second.session.model.quant == "q2_k"
        await wait_for(pilot, lambda: len(second.message_views()) == 2, "the same conversation")
        await _ask(pilot, second, "再说一遍")
        conversation_id = second.session.conversation_id
        assert conversation_id is not None
        reply = second.session.store.messages(conversation_id)[-1]
        # The looping model ran into the new max tokens; the old one would have stopped by itself.
        assert reply.meta["stop_reason"] == "length" and reply.meta["completion_tokens"] == 6
        assert second.session.last_stats.stop_reason == "length"
        assert reply.content != RIG_TEXT and (RIG_TEXT * 2).startswith(reply.content)


@pytest.mark.slow
async def test_export_notice_shows_a_bracketed_path_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: TinyModels
) -> None:
    """Paths are the person's text, not Textual markup: "[b]" in a folder name must survive."""
    from textual.widgets._toast import Toast

    monkeypatch.setenv("HUOZI_HOME", str(tmp_path / "[b]活字"))
    heard = Heard()
    app = _app_with_engine(tiny_models.get("merged", "q4_0", rig="chat"))
    async with app.run_test(size=(160, 30), notifications=True, message_hook=heard) as pilot:
        await _ask(pilot, _chat(app), QUESTION)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: len(heard.exported()) == 1, "the Markdown export")
        target = heard.exported()[0]
        assert "[b]活字" in str(target) and target.is_file()
        await wait_for(
            pilot,
            lambda: any(str(target) in str(t.render()) for t in app.screen.query(Toast)),
            "a toast naming the exported file as it is",
        )


class LockHolder:
    """Another process holding the conversation database's write lock until released."""

    def __init__(self, path: Path) -> None:
        import subprocess
        import sys

        code = (
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "db.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "db.execute('ROLLBACK')\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.close()
        self.process.wait(60)


@pytest.mark.slow
async def test_locked_database_keeps_the_reply_on_screen_and_says_once_it_was_not_saved(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    """A reply whose store write failed vanished behind 'OperationalError: database is locked';
    a message typed while the database was locked crashed the screen's handler."""
    from huozi_local.core.store.conversations import ConversationStore
    from huozi_local.tui.widgets.message_view import MessageView

    paths = Paths.from_env()
    store = ConversationStore.open(paths.database_file, busy_timeout_s=0.05)
    chosen = Settings(n_ctx=2048, n_gpu_layers=0, temperature=0.0, max_tokens=100_000)
    planned, loaded = load_tiny(tiny_models.get("merged", "q4_0", rig="loop"), chosen, label="tiny")
    info = loaded.info(planned)
    app = create_app(settings=chosen, store=store, backend=loaded.backend, model_info=info)
    heard = Heard()
    async with app.run_test(size=(110, 30), message_hook=heard) as pilot:
        screen = _chat(app)
        prompt = screen.query_one(ChatInput)
        prompt.focus()
        prompt.insert(QUESTION)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.stream_writes > 0, "the reply streaming")
        holder = LockHolder(paths.database_file)  # the question is stored; the reply will not be
        try:
            await pilot.press("escape")
            await wait_for(pilot, lambda: screen.replies_finished == 1, "the stopped reply")
            unsaved = [n for n in heard.notices if "not saved" in n]
            assert len(unsaved) == 1 and "locked by another program" in unsaved[0]
            shown = [str(v.text) for v in screen.query(MessageView) if v.role == "assistant"]
            assert shown and RIG_TEXT[:2] in shown[-1]

            prompt.insert("再来一次")
            await pilot.press("enter")
            await wait_for(pilot, lambda: len(heard.notices) > len(unsaved), "the refusal")
            assert "locked by another program" in heard.notices[-1]
            assert prompt.text == "再来一次"  # what was typed is kept for a retry
            assert not screen.replying
        finally:
            holder.release()
    store.close()


@pytest.mark.slow
async def test_the_model_starts_on_the_prompt_before_the_screen_lays_out_the_reply(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    """Sending and regenerating start the model first: mounting views overlaps the prompt."""
    app = _app_with_engine(tiny_models.get("merged", "q4_0", rig="chat"))
    async with app.run_test(size=(110, 30)) as pilot:
        screen = _chat(app)
        order: list[str] = []
        start_model = screen.generate
        log = screen.message_log
        mount = log.mount

        def generate(cancel: threading.Event) -> object:
            order.append("model")
            return start_model(cancel)

        def mount_in_order(*widgets: MessageView, **kwargs: object) -> object:
            order.append(f"mount {widgets[0].role}")
            return mount(*widgets, **kwargs)  # type: ignore[arg-type]

        screen.generate = generate  # type: ignore[method-assign, assignment]
        log.mount = mount_in_order  # type: ignore[method-assign, assignment]
        await _ask(pilot, screen, QUESTION)
        assert order == ["model", "mount user", "mount assistant"]
        order.clear()
        finished = screen.replies_finished
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.replies_finished == finished + 1, "a new reply")
        assert order == ["model", "mount assistant"]
        # and the text still reached the views mounted after the model started
        replies = [v for v in screen.message_views() if v.role == "assistant"]
        assert len(replies) == 1 and RIG_TEXT in replies[0].text


@pytest.mark.slow
async def test_changing_moe_layers_in_ram_reloads_the_model_with_them(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    """The reload check used to compare the model, n_ctx and n_gpu_layers only: a new cpu_moe
    was saved while the model stayed loaded with its experts where they were."""
    from huozi_local.tui.options import AppOptions

    paths = Paths.from_env()
    installed = family_model_path(paths, "huozi3", "q4_0")
    installed.parent.mkdir(parents=True, exist_ok=True)
    installed.symlink_to(tiny_models.get("merged", "q4_0", rig="chat"))
    recording = RecordingLoader()
    plans = recording.placements
    gpu = AppOptions(machine_probe=lambda: Machine.synthetic("cuda", 8 * 1024**3, 32 * 1024**3))
    settings = Settings(model="huozi3:q4_0", n_ctx=1024, temperature=0.0)
    app = create_app(settings=settings, loader=recording, options=gpu)
    async with app.run_test(size=(110, 50)) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        first = app.screen
        assert plans == [(5, 0)]  # all 4 layers and the output on the GPU, no experts in RAM
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        app.screen.query_one("#cpu_moe", Input).value = "2"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(
            pilot, lambda: chat_ready(app) and app.screen is not first, "the reloaded chat"
        )
        assert plans == [(5, 0), (5, 2)]
        assert Settings.load(paths.config_file).cpu_moe == 2
        # Saving again with nothing that changes the load keeps the model as it is.
        second = app.screen
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        app.screen.query_one("#temperature", Input).value = "0.5"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is second, "the same chat")
        assert plans == [(5, 0), (5, 2)]
