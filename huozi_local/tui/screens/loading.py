"""Loading a model with a progress bar; Escape gives up and returns to the setup screen.

A loader that raises something unexpected (a RuntimeError from llama.cpp's bindings) used to
leave this screen waiting forever; it is a `RecoveringScreen`: the message, the log's path,
Retry (load again) or Back (to setup).
"""

from __future__ import annotations

import threading
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Center, Middle
from textual.message import Message
from textual.widgets import ProgressBar

from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.loading.load import PlannedLoad
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.progress import Progress
from huozi_local.tui.failures import RecoveringScreen, Recovery
from huozi_local.tui.messages import BackendLoaded, SetupRequested
from huozi_local.tui.model_choice import BackendLoader, LoadedBackend
from huozi_local.tui.remedies import app_wording
from huozi_local.tui.widgets.plain import Label


class LoadProgress(Message):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress


class LoadFinished(Message):
    def __init__(self, loaded: LoadedBackend | None, error: str = "") -> None:
        super().__init__()
        self.loaded = loaded
        self.error = error


class LoadingScreen(RecoveringScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    LoadingScreen Center { height: auto; }
    LoadingScreen ProgressBar { margin: 1 0; }
    """

    def __init__(self, planned: PlannedLoad, loader: BackendLoader, machine: Machine) -> None:
        super().__init__()
        self.planned = planned
        self.loader = loader
        self.machine = machine
        self.cancel_event = threading.Event()

    def compose(self) -> ComposeResult:
        with Middle():
            with Center():
                title = f"正在加载模型 Loading {self.planned.label}"
                yield Label(title, id="loading-title")
            with Center():
                yield ProgressBar(total=1.0, show_eta=False, id="load-progress")
            with Center():
                yield Label("", id="load-detail")

    def on_mount(self) -> None:
        self.start_load()

    def start_load(self) -> None:
        self.cancel_event = threading.Event()
        self.query_one(ProgressBar).update(progress=0)
        recovery = Recovery(
            f"loading {self.planned.label}",
            retry=self.start_load,
            back=lambda: self.post_message(SetupRequested()),
        )
        self.recover(self.load(), recovery)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def load(self) -> None:
        def report(progress: Progress) -> None:
            self.post_message(LoadProgress(progress))

        try:
            loaded = self.loader(self.planned, self.machine, report, self.cancel_event)
        except Cancelled:
            self.post_message(LoadFinished(None, "cancelled"))
            return
        except HuoziError as exc:
            self.post_message(LoadFinished(None, app_wording(exc)))
            return
        self.post_message(LoadFinished(loaded))

    def on_load_progress(self, message: LoadProgress) -> None:
        fraction = message.progress.fraction
        if fraction is not None:
            self.query_one(ProgressBar).update(progress=fraction)
        if message.progress.message:
            self.query_one("#load-detail", Label).update(message.progress.message)

    def on_load_finished(self, message: LoadFinished) -> None:
        if message.loaded is not None:
            self.post_message(BackendLoaded(self.planned, message.loaded))
        elif message.error == "cancelled":
            self.post_message(SetupRequested())
        else:
            self.post_message(SetupRequested(message.error, failed=self.planned))

    def action_cancel(self) -> None:
        self.cancel_event.set()
