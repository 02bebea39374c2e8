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
from textual.widgets import Label, ProgressBar

from huozi_local.core.chat.types import ChatBackend
from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.progress import Progress
from huozi_local.tui.failures import RecoveringScreen
from huozi_local.tui.messages import BackendLoaded, SetupRequested
from huozi_local.tui.model_choice import BackendLoader, ModelChoice


class LoadProgress(Message):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress


class LoadFinished(Message):
    def __init__(self, backend: ChatBackend | None, error: str = "") -> None:
        super().__init__()
        self.backend = backend
        self.error = error


class LoadingScreen(RecoveringScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    LoadingScreen Center { height: auto; }
    LoadingScreen ProgressBar { margin: 1 0; }
    """

    def __init__(self, choice: ModelChoice, loader: BackendLoader) -> None:
        super().__init__()
        self.choice = choice
        self.loader = loader
        self.cancel_event = threading.Event()

    def compose(self) -> ComposeResult:
        with Middle():
            with Center():
                yield Label(f"正在加载模型 Loading {self.choice.label}", id="loading-title")
            with Center():
                yield ProgressBar(total=1.0, show_eta=False, id="load-progress")
            with Center():
                yield Label("", id="load-detail")

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def load(self) -> None:
        def report(progress: Progress) -> None:
            self.post_message(LoadProgress(progress))

        try:
            backend = self.loader(self.choice, report, self.cancel_event)
        except Cancelled:
            self.post_message(LoadFinished(None, "cancelled"))
            return
        except HuoziError as exc:
            self.post_message(LoadFinished(None, str(exc)))
            return
        self.post_message(LoadFinished(backend))

    def on_load_progress(self, message: LoadProgress) -> None:
        fraction = message.progress.fraction
        if fraction is not None:
            self.query_one(ProgressBar).update(progress=fraction)
        if message.progress.message:
            self.query_one("#load-detail", Label).update(message.progress.message)

    def on_load_finished(self, message: LoadFinished) -> None:
        if message.backend is not None:
            self.post_message(BackendLoaded(message.backend, self.choice.info(message.backend)))
        elif message.error == "cancelled":
            self.post_message(SetupRequested())
        else:
            self.post_message(SetupRequested(message.error, failed=self.choice))

    def action_cancel(self) -> None:
        self.cancel_event.set()

    def describe_worker(self, name: str) -> str:
        return f"loading {self.choice.label}"

    def retry_worker(self, name: str) -> None:
        self.cancel_event = threading.Event()
        self.query_one(ProgressBar).update(progress=0)
        self.load()

    def back_from_failure(self, name: str) -> None:
        self.post_message(SetupRequested())
