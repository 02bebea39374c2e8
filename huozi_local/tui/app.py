"""The Textual app, built by `create_app` with everything it needs passed in (posting's factory).

Nothing here reads the environment or opens files at import time: `commands/app.py` resolves the
paths, settings, store and backend loader, tests pass their own (a temporary HUOZI_HOME, the tiny
models, a fake hub endpoint), and the benchmark passes a ready engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from huozi_local.core.chat.types import ChatBackend
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.store.conversations import ConversationStore
from huozi_local.tui.failures import FailureLog
from huozi_local.tui.messages import (
    BackendLoaded,
    LoadRequested,
    ModelDownloaded,
    SettingsRequested,
    SetupRequested,
)
from huozi_local.tui.model_choice import (
    BackendLoader,
    ModelChoice,
    load_local_engine,
    saved_model_choice,
)
from huozi_local.tui.options import AppOptions
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.loading import LoadingScreen
from huozi_local.tui.screens.settings import SettingsScreen
from huozi_local.tui.screens.setup import SetupScreen
from huozi_local.tui.session import ChatSession, ModelInfo

CSS_PATH = Path(__file__).with_name("app.tcss")


class HuoziApp(App[None]):
    TITLE = "活字 huozi-local"
    CSS_PATH = CSS_PATH
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(
        self,
        *,
        settings: Settings,
        paths: Paths,
        store: ConversationStore,
        loader: BackendLoader = load_local_engine,
        backend: ChatBackend | None = None,
        model_info: ModelInfo | None = None,
        options: AppOptions | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.paths = paths
        self.store = store
        self.loader = loader
        self.backend = backend
        self.model_info = model_info
        self.options = options or AppOptions()
        self.session: ChatSession | None = None
        self.failure_log = FailureLog.in_folder(paths.data_dir)
        """Where screens log a worker's unexpected failure (failures.RecoveringScreen)."""
        self._owns_backend = False
        """Only a backend this app loaded is closed by it; an injected one belongs to the caller."""

    def on_mount(self) -> None:
        if self.store.notice:
            self.notify(self.store.notice, severity="warning", timeout=15, markup=False)
        if self.backend is not None:
            info = self.model_info or ModelInfo(self.backend.model_name, n_ctx=self.backend.n_ctx)
            self.open_chat(self.backend, info, owned=False)
            return
        choice = saved_model_choice(self.settings, self.paths, self.options.machine())
        if choice is not None:
            self.load_model(choice)
        else:
            self.open_setup()

    # -- moving between screens --------------------------------------------------------------

    def _show(self, screen: Screen[None]) -> None:
        if len(self.screen_stack) > 1:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def open_setup(self, error: str = "", failed: ModelChoice | None = None) -> None:
        """The setup screen; an `error` (a model that would not load) stays on it until acted on,
        and Retry there loads `failed` again when that is the model that would not load."""
        self._show(SetupScreen(self.paths, self.settings, self.options, error, failed))

    def load_model(self, choice: ModelChoice) -> None:
        self._show(LoadingScreen(choice, self.loader))

    def model_ready(self, choice: ModelChoice, spec: str) -> None:
        """Remember the model for the next run, then load it."""
        self.settings.model = spec
        self.save_settings()
        self.load_model(choice)

    def open_chat(self, backend: ChatBackend, info: ModelInfo, *, owned: bool = True) -> None:
        if self.backend is not None and self.backend is not backend and self._owns_backend:
            _close(self.backend)
        self.backend = backend
        self._owns_backend = owned
        self.model_info = info
        self.session = ChatSession(self.store, backend, self.settings, info)
        self._show(ChatScreen(self.session, self.paths.data_dir / "exports"))

    def save_settings(self) -> None:
        try:
            self.settings.save(self.paths.config_file)
        except (OSError, HuoziError) as exc:
            self.notify(f"settings not saved: {exc}", severity="error", markup=False)

    # -- what the screens ask for ------------------------------------------------------------

    @on(SetupRequested)
    def _setup_requested(self, message: SetupRequested) -> None:
        self.open_setup(message.error, message.failed)

    @on(LoadRequested)
    def _load_requested(self, message: LoadRequested) -> None:
        self.load_model(message.choice)

    @on(ModelDownloaded)
    def _model_downloaded(self, message: ModelDownloaded) -> None:
        self.model_ready(message.choice, message.spec)

    @on(BackendLoaded)
    def _backend_loaded(self, message: BackendLoaded) -> None:
        self.open_chat(message.backend, message.info)

    @on(SettingsRequested)
    def action_open_settings(self) -> None:
        self.push_screen(
            SettingsScreen(self.settings, self.paths, self.model_info, self.options.machine_probe),
            self._settings_closed,
        )

    def _settings_closed(self, changed: Settings | None) -> None:
        if changed is None:
            return
        reload_needed = (
            changed.model != self.settings.model
            or changed.n_ctx != self.settings.n_ctx
            or changed.n_gpu_layers != self.settings.n_gpu_layers
        )
        for name, value in vars(changed).items():
            setattr(self.settings, name, value)
        self.save_settings()
        if reload_needed and self.model_info is not None and self.model_info.location == "local":
            choice = saved_model_choice(self.settings, self.paths, self.options.machine())
            if choice is None:
                self.notify(
                    f"{self.settings.model} is not downloaded", severity="error", markup=False
                )
                self.open_setup()
            else:
                self.load_model(choice)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The palette (Ctrl+P) is the only way to JSON export: one key per format is too many."""
        yield from super().get_system_commands(screen)
        if isinstance(screen, ChatScreen):
            yield SystemCommand(
                "Export as JSON",
                "Save this conversation as a JSON file (roles, text, reply stats)",
                lambda: screen.action_export("json"),
            )
            yield SystemCommand(
                "Export as Markdown",
                "Save this conversation as a Markdown file (also Ctrl+O)",
                lambda: screen.action_export("markdown"),
            )
            yield SystemCommand(
                "Settings", "Sampling, context, GPU layers and the model", screen.action_settings
            )

    def on_unmount(self) -> None:
        if self.backend is not None and self._owns_backend:
            _close(self.backend)


def _close(backend: ChatBackend) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        close()


def create_app(
    *,
    settings: Settings | None = None,
    paths: Paths | None = None,
    store: ConversationStore | None = None,
    loader: BackendLoader = load_local_engine,
    backend: ChatBackend | None = None,
    model_info: ModelInfo | None = None,
    options: AppOptions | None = None,
) -> HuoziApp:
    """The app with its dependencies; unspecified ones come from HUOZI_HOME / the platform."""
    paths = paths or Paths.from_env()
    settings = settings or Settings.load(paths.config_file)
    store = store or ConversationStore.open(paths.database_file)
    return HuoziApp(
        settings=settings,
        paths=paths,
        store=store,
        loader=loader,
        backend=backend,
        model_info=model_info,
        options=options,
    )
