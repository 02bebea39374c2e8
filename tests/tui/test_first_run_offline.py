"""First run as people in mainland China meet it: the hub out of reach, a mirror, a file on disk.

Every source is a real listener (the fake hub of tests/hub_server.py, spoken to by the real
huggingface_hub client) or a real failure (a refused port, a host name that cannot resolve); the
machine is a described one. The models are tiny huozi files in the official pre-2024 layout, so
the real repair runs before the real engine chats.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.widgets import Button, Input, Label, ProgressBar
from tui_helpers import LoaderFailingOnce, chat_ready, load_tiny, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub_server import FakeHub, closed_port_url, running_hub

from huozi_local.core.chat.types import ChatBackend, ChatMessage, ReplyEvent, SamplingOptions
from huozi_local.core.config import Paths, Settings
from huozi_local.core.fetch.in_place import InPlaceFiles
from huozi_local.core.fetch.model_folder import family_model_path
from huozi_local.core.fetch.sources import DownloadSource, SourceKind
from huozi_local.core.planning.hardware import Machine
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels
from huozi_local.tui.app import HuoziApp, create_app
from huozi_local.tui.options import AppOptions
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.setup import SetupScreen
from huozi_local.tui.widgets.chat_input import ChatInput
from huozi_local.tui.widgets.failure_panel import FailurePanel
from huozi_local.tui.widgets.source_picker import SourcePicker

GIB = 1024**3
HUOZI_REPO = "HIT-SCIR/huozi3-gguf"
UNRESOLVABLE = "http://huggingface.invalid"  # .invalid never resolves (RFC 2606)


def gaming_gpu() -> Machine:
    return Machine.synthetic("cuda", 24 * GIB, 64 * GIB)


def text_of(screen: SetupScreen, selector: str) -> str:
    return str(screen.query_one(selector, Label).render())


async def setup_screen(app: HuoziApp, pilot: object) -> SetupScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, SetupScreen), "the setup screen")  # type: ignore[arg-type]
    screen = app.screen
    assert isinstance(screen, SetupScreen)
    return screen


async def chat_once(app: HuoziApp, pilot: object) -> ChatScreen:
    await wait_for(pilot, lambda: chat_ready(app), "the chat screen")  # type: ignore[arg-type]
    chat = app.screen
    assert isinstance(chat, ChatScreen)
    prompt = chat.query_one(ChatInput)
    await wait_for(pilot, lambda: prompt.has_focus, "the message box to take focus")  # type: ignore[arg-type]
    prompt.insert("你好")
    await pilot.press("enter")  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: chat.replies_finished == 1, "the first reply")  # type: ignore[arg-type]
    assert [v.text for v in chat.message_views()] == ["你好", RIG_TEXT]
    return chat


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hub_url", "reason"),
    [(closed_port_url(), "connection refused"), (UNRESOLVABLE, "host name not found")],
    ids=["refused", "dns"],
)
async def test_unreachable_hub_keeps_the_reason_and_next_steps_on_screen(
    huozi_home: Path, hub_url: str, reason: str
) -> None:
    options = AppOptions(
        machine_probe=gaming_gpu, sources=(DownloadSource(SourceKind.HF, hub_url),)
    )
    app = create_app(settings=Settings(), options=options)
    async with app.run_test(size=(100, 30)) as pilot:  # a laptop terminal: the panel is below
        setup = await setup_screen(app, pilot)
        await wait_for(pilot, lambda: setup.probes_done, "the probe")
        picker = setup.query_one(SourcePicker)
        assert picker.results[SourceKind.HF].reason == reason
        assert setup.query_one("#start", Button).has_focus

        await pilot.press("enter")  # nothing reachable: the download itself says why
        panel = setup.query_one(FailurePanel)
        await wait_for(pilot, lambda: panel.showing, "the failure to be shown")
        assert panel.reason.startswith(f"cannot reach {hub_url} ({reason})")
        assert "HF_ENDPOINT=https://hf-mirror.com" in panel.reason  # the CLI's wording
        assert "another source" in text_of(setup, "#failure-next")
        assert text_of(setup, "#stage") == "失败 Failed"
        assert not setup.query_one(ProgressBar).display  # stopped, not pulsing
        assert not setup.query_one("#start", Button).disabled
        await wait_for(pilot, lambda: setup.query_one("#failure-retry", Button).has_focus, "focus")
        # In view and read whole: scrolled to, and the long reason wraps inside the panel.
        await pilot.pause()
        assert app.screen.region.contains_region(panel.region)
        reason_label = setup.query_one("#failure-reason", Label)
        assert reason_label.region.right <= panel.region.right and reason_label.size.height >= 2

        for _ in range(20):  # the app goes on running; the failure stays until acted on
            await pilot.pause(0.05)
        assert panel.showing and panel.reason.startswith("cannot reach")

        await pilot.click("#failure-file")  # "use a file on disk" takes the user there
        assert not panel.showing
        assert setup.query_one("#import-path", Input).has_focus


@dataclass
class FlakyHub(FakeHub):
    """Sends the first `first_slice` bytes of the file, then drops every connection at once
    while `down` (the transfer's retries make no progress and it gives up)."""

    first_slice: int = 1 << 20
    down: bool = True
    _served_first: bool = False

    def take_cut(self) -> int | None:
        if not self._served_first:
            self._served_first = True
            return self.first_slice
        return 0 if self.down else None


@pytest.mark.slow
async def test_retry_after_a_failed_download_resumes_the_partial_file(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    paths = Paths.from_env()
    files = InPlaceFiles(family_model_path(paths, "huozi3", "q2_k"))
    hub = FlakyHub()
    with running_hub(hub):
        hub.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", legacy)
        options = AppOptions(machine_probe=gaming_gpu, endpoint=hub.hub_url)
        app = create_app(settings=Settings(temperature=0.0), options=options)
        async with app.run_test(size=(110, 50)) as pilot:
            setup = await setup_screen(app, pilot)
            await pilot.press("enter")
            panel = setup.query_one(FailurePanel)
            await wait_for(pilot, lambda: panel.showing, "the download to give up")
            assert "run the command again to resume" in panel.reason
            kept = files.held_bytes()  # the first bytes arrived, then the network fell
            assert 0 < kept < legacy.stat().st_size
            before = len(hub.requests_for("GET", "/lfs/"))

            hub.down = False  # the network is back
            await pilot.press("enter")  # Retry has the focus
            await chat_once(app, pilot)
    retried = hub.requests_for("GET", "/lfs/")[before:]
    assert retried and all(r.status == 206 for r in retried if r.body_bytes)
    assert all(r.range and not r.range.startswith("bytes=0-") for r in retried)  # resumed


@pytest.mark.slow
async def test_mirror_reachable_enter_alone_gets_to_a_chat(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    paths = Paths.from_env()
    with running_hub() as mirror:
        mirror.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", legacy)
        sources = (
            DownloadSource(SourceKind.HF, closed_port_url()),
            DownloadSource(SourceKind.MIRROR, mirror.hub_url),
            DownloadSource(SourceKind.MODELSCOPE, UNRESOLVABLE),
        )
        options = AppOptions(machine_probe=gaming_gpu, sources=sources)
        app = create_app(settings=Settings(temperature=0.0), options=options)
        async with app.run_test(size=(110, 50)) as pilot:
            setup = await setup_screen(app, pilot)
            picker = setup.query_one(SourcePicker)
            await pilot.press("enter")  # the only key: pressed before the probes are in
            await chat_once(app, pilot)
            assert picker.selected == sources[1] and not picker.user_chose
            usable = {kind: r.usable for kind, r in picker.results.items()}
            assert usable == {
                SourceKind.HF: False,
                SourceKind.MIRROR: True,
                SourceKind.MODELSCOPE: False,
            }
            assert mirror.requests_for("GET", "/lfs/")
            assert setup.stages_seen == ["download", "verify"]  # repaired in the stream

    saved = Settings.load(paths.config_file)
    assert (saved.model, saved.download_source) == ("huozi3:q2_k", "mirror")
    assert saved.mirror_endpoint == mirror.hub_url


@pytest.mark.slow
async def test_a_file_on_disk_is_imported_from_setup_and_chats(
    huozi_home: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    options = AppOptions(
        machine_probe=gaming_gpu, sources=(DownloadSource(SourceKind.HF, closed_port_url()),)
    )
    not_a_model = tmp_path / "notes.gguf"
    not_a_model.write_text("not a model\n" * 10, encoding="utf-8")
    app = create_app(settings=Settings(temperature=0.0), options=options)
    async with app.run_test(size=(110, 50)) as pilot:
        setup = await setup_screen(app, pilot)
        path_box = setup.query_one("#import-path", Input)
        path_box.value = str(not_a_model)
        await pilot.click("#import")
        panel = setup.query_one(FailurePanel)
        await wait_for(pilot, lambda: panel.showing, "the refusal")
        assert "is not a GGUF model file" in panel.reason

        path_box.value = str(tiny_models.get("split", "q4_0", rig="chat"))
        path_box.focus()
        await pilot.press("enter")
        await chat_once(app, pilot)
        assert "repair" in setup.stages_seen
    assert family_model_path(Paths.from_env(), "huozi3", "q4_0").exists()
    assert Settings.load(Paths.from_env().config_file).model == "huozi3:q4_0"


@pytest.mark.slow
async def test_an_unexpected_error_in_the_download_is_shown_logged_and_retried(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    paths = Paths.from_env()
    # The listing cache cannot be written (its folder is a file): an OSError no code expects.
    paths.cache_dir.parent.mkdir(parents=True, exist_ok=True)
    paths.cache_dir.write_text("in the way\n", encoding="utf-8")
    with running_hub() as hub:
        hub.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", legacy)
        options = AppOptions(machine_probe=gaming_gpu, endpoint=hub.hub_url)
        app = create_app(settings=Settings(temperature=0.0), paths=paths, options=options)
        async with app.run_test(size=(110, 50)) as pilot:
            setup = await setup_screen(app, pilot)
            await pilot.press("enter")
            await wait_for(pilot, lambda: setup.last_failure != "", "the failure")
            dialog = app.screen
            assert type(dialog).__name__ == "WorkerFailed"
            message = str(dialog.query_one("#failed-message", Label).render())
            assert message.startswith(("NotADirectoryError", "FileExistsError"))
            log = paths.data_dir / "logs" / "huozi-local.log"
            assert str(log) in str(dialog.query_one("#failed-log", Label).render())
            assert "Traceback" in log.read_text(encoding="utf-8")
            # The screen underneath is usable again, not frozen with Cancel armed.
            assert not setup.query_one("#start", Button).disabled
            assert setup.query_one("#cancel", Button).disabled

            paths.cache_dir.unlink()  # the user fixes it, then Retry
            await pilot.press("enter")  # Retry has the focus
            await chat_once(app, pilot)


@pytest.mark.slow
async def test_a_loader_that_raises_is_shown_and_retry_loads(
    huozi_home: Path, tiny_models: TinyModels
) -> None:

    model = tiny_models.get("merged", "q4_0", rig="chat")
    flaky_loader = LoaderFailingOnce(RuntimeError("llama_decode returned -3"))

    settings = Settings(model=str(model), temperature=0.0)
    app = create_app(
        settings=settings, loader=flaky_loader, options=AppOptions(machine_probe=gaming_gpu)
    )
    async with app.run_test(size=(110, 50)) as pilot:
        await wait_for(pilot, lambda: type(app.screen).__name__ == "WorkerFailed", "the dialog")
        message = str(app.screen.query_one("#failed-message", Label).render())
        assert message == "RuntimeError: llama_decode returned -3"
        await pilot.click("#retry")
        await chat_once(app, pilot)
    assert len(flaky_loader.attempts) == 2


@pytest.mark.slow
async def test_retry_after_a_model_would_not_load_loads_that_model_again(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    """A `--model FILE` (or a model chosen in settings) that fails with a reason: the setup
    screen shows it, and its Retry loads that model again, not the recommended download."""
    from huozi_local.core.errors import HuoziError

    model = tiny_models.get("merged", "q4_0", rig="chat")
    short_of_memory_once = LoaderFailingOnce(
        HuoziError("the model needs 30 GB of memory, 12 GB are free")
    )

    hub = FakeHub()  # reachable and empty: a Retry that downloaded would fail here
    with running_hub(hub):
        options = AppOptions(machine_probe=gaming_gpu, endpoint=hub.hub_url)
        settings = Settings(model=str(model), temperature=0.0)
        app = create_app(settings=settings, loader=short_of_memory_once, options=options)
        async with app.run_test(size=(110, 50)) as pilot:
            setup = await setup_screen(app, pilot)
            panel = setup.query_one(FailurePanel)
            await wait_for(pilot, lambda: panel.showing, "the reason on the setup screen")
            assert "30 GB of memory" in panel.reason
            assert "Retry loading it" in text_of(setup, "#failure-next")
            await pilot.click("#failure-retry")
            await chat_once(app, pilot)
    assert [p.model.path for p in short_of_memory_once.attempts] == [model, model]
    assert hub.requests_for("GET", "/lfs/") == []


@pytest.mark.slow
async def test_top_level_model_option_opens_the_app_with_that_file(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    from huozi_local.cli import build_parser
    from huozi_local.commands.app import _build
    from huozi_local.core.store.conversations import ConversationStore

    model = tiny_models.get("merged", "q4_0", rig="chat")
    args = build_parser().parse_args(["--model", str(model)])
    paths = Paths.from_env()
    store = ConversationStore.open(paths.database_file)
    app = _build(
        args, paths, Settings(temperature=0.0), store, AppOptions(machine_probe=gaming_gpu)
    )
    async with app.run_test(size=(110, 50)) as pilot:
        await chat_once(app, pilot)
    store.close()


class BrokenOnce:
    """The real engine behind a backend whose first reply dies of a bug (an injected fault)."""

    def __init__(self, engine: ChatBackend) -> None:
        self.engine = engine
        self.calls = 0

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        sampling: SamplingOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ReplyEvent]:
        self.calls += 1
        if self.calls == 1:
            raise KeyError("token 57001")
        return self.engine.stream_reply(messages, sampling, cancel)

    def close(self) -> None:
        self.engine.close()


@pytest.mark.slow
async def test_a_reply_that_dies_is_shown_and_retry_answers(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    from huozi_local.tui.failures import WorkerFailed

    settings = Settings(n_ctx=2048, n_gpu_layers=0, temperature=0.0)
    model = tiny_models.get("merged", "q4_0", rig="chat")
    planned, loaded = load_tiny(model, settings, machine=gaming_gpu())
    backend = BrokenOnce(loaded.backend)
    app = create_app(settings=settings, backend=backend, model_info=loaded.info(planned))
    async with app.run_test(size=(110, 50)) as pilot:
        await wait_for(pilot, lambda: chat_ready(app), "the chat screen")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        prompt = chat.query_one(ChatInput)
        prompt.focus()
        prompt.insert("你好")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, WorkerFailed), "the dialog")
        assert "KeyError: 'token 57001'" in str(app.screen.query_one("#failed-message").render())
        await wait_for(pilot, lambda: not chat.replying, "the reply to be given up")
        assert [v.text for v in chat.message_views()] == ["你好"]  # what was sent stays
        await pilot.click("#retry")
        await wait_for(pilot, lambda: chat.replies_finished == 2, "the retried reply")
        assert [v.text for v in chat.message_views()] == ["你好", RIG_TEXT]
    assert backend.calls == 2


@pytest.mark.slow
async def test_modelscope_reachable_enter_alone_gets_to_a_chat(
    huozi_home: Path, tiny_models: TinyModels
) -> None:
    from modelscope_server import running_modelscope

    legacy = tiny_models.get("split", "q4_0", rig="chat")
    with running_modelscope() as site:
        site.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", legacy)
        sources = (
            DownloadSource(SourceKind.HF, closed_port_url()),
            DownloadSource(SourceKind.MIRROR, UNRESOLVABLE),
            DownloadSource(SourceKind.MODELSCOPE, site.hub_url),
        )
        options = AppOptions(machine_probe=gaming_gpu, sources=sources)
        app = create_app(settings=Settings(temperature=0.0), options=options)
        async with app.run_test(size=(110, 50)) as pilot:
            setup = await setup_screen(app, pilot)
            await wait_for(pilot, lambda: setup.probes_done, "the probes")
            await pilot.press("enter")
            await chat_once(app, pilot)
        assert site.requests_for("GET", "/lfs/")  # the bytes came from ModelScope's CDN
    saved = Settings.load(Paths.from_env().config_file)
    assert (saved.model, saved.download_source) == ("huozi3:q2_k", "modelscope")
