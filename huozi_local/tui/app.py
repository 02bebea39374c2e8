"""The Textual app, built by `create_app` with everything it needs passed in (posting's factory).

Nothing here reads the environment or opens files at import time: `commands/app.py` resolves the
paths, settings, store and backend loader, tests pass their own (a temporary HUOZI_HOME, the tiny
models, a fake hub endpoint), and the benchmark passes a ready engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields, replace
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.screen import Screen

from huozi_local.core.chat.types import ChatBackend
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch.sources import DownloadSource, SourceKind
from huozi_local.core.loading.inputs import LoadOverrides, PlanInputs, overrides_after_edit
from huozi_local.core.loading.load import PlannedLoad, plan_load
from huozi_local.core.loading.model_file import ModelFile
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
    load_local,
    plan_saved_model,
    saved_model_plan_or_none,
)
from huozi_local.tui.options import AppOptions
from huozi_local.tui.remedies import app_wording
from huozi_local.tui.screens.chat import ChatScreen
from huozi_local.tui.screens.loading import LoadingScreen
from huozi_local.tui.screens.settings import SettingsScreen
from huozi_local.tui.screens.setup import SetupScreen
from huozi_local.tui.session import ChatSession, ModelInfo
from huozi_local.tui.widgets.plain import lines

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
        loader: BackendLoader = load_local,
        backend: ChatBackend | None = None,
        model_info: ModelInfo | None = None,
        options: AppOptions | None = None,
        overrides: LoadOverrides | None = None,
        model: ModelFile | None = None,
    ) -> None:
        super().__init__()
        self._opened_model = model
        """The `--model` file, its header already read by the command line."""
        self.settings = settings
        """The saved settings: changed only by `apply_settings` and what setup chose, and saved
        each time; this run's overrides never enter them."""
        self.overrides = overrides or LoadOverrides()
        """This run's command-line choices (`--model`, `--cpu-moe`): never saved."""
        self.paths = paths
        self.store = store
        self.loader = loader
        self.backend = backend
        self.model_info = model_info
        self.options = options or AppOptions()
        self.planned: PlannedLoad | None = None
        """The load behind the open local model (None: none yet, or a remote one)."""
        self.session: ChatSession | None = None
        self.failure_log = FailureLog.in_folder(paths.data_dir)
        """Where screens log a worker's unexpected failure (failures.RecoveringScreen)."""
        self._owns_backend = False
        """Only a backend this app loaded is closed by it; an injected one belongs to the caller."""

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification, a screen's or a widget's too, comes here: what it says often
        quotes an error, a path or a server's answer, so it is never read as markup and its
        control characters are escaped (`widgets.plain`). `markup` is there for the signature."""
        super().notify(
            lines(message), title=lines(title), severity=severity, timeout=timeout, markup=False
        )

    def on_mount(self) -> None:
        if self.store.notice:
            self.notify(self.store.notice, severity="warning", timeout=15)
        if self.backend is not None:
            info = self.model_info or ModelInfo(self.backend.model_name, n_ctx=self.backend.n_ctx)
            self.open_chat(self.backend, info, owned=False)
            return
        machine = self.options.machine()
        if self._opened_model is not None:
            inputs = PlanInputs.of(self.settings, self.overrides)
            planned: PlannedLoad | None = plan_load(self._opened_model, machine, inputs)
        else:
            planned = saved_model_plan_or_none(self.settings, self.overrides, self.paths, machine)
        if planned is not None:
            self.load_model(planned)
        else:
            self.open_setup()

    # -- moving between screens --------------------------------------------------------------

    def _show(self, screen: Screen[None]) -> None:
        if len(self.screen_stack) > 1:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def open_setup(self, error: str = "", failed: PlannedLoad | None = None) -> None:
        """The setup screen; an `error` (a model that would not load) stays on it until acted on,
        and Retry there loads `failed` again when that is the model that would not load."""
        machine = self.options.machine()
        self._show(SetupScreen(self.paths, self.settings, self.options, machine, error, failed))

    def load_model(self, planned: PlannedLoad) -> None:
        self._show(LoadingScreen(planned, self.loader, self.options.machine()))

    def model_ready(self, planned: PlannedLoad, source: DownloadSource | None) -> None:
        """Remember the model (and where it came from) for the next run, then load it: the
        person chose it, so a `--model` given for this run no longer applies."""
        self.settings.model = planned.model.spec
        if source is not None:
            self.settings.download_source = source.kind.value
            if source.kind is SourceKind.MIRROR:
                self.settings.mirror_endpoint = source.endpoint
        self.overrides = self.overrides.without(["model"])
        self.save_settings()
        self.load_model(planned)

    def open_chat(self, backend: ChatBackend, info: ModelInfo, *, owned: bool = True) -> None:
        if self.backend is not None and self.backend is not backend and self._owns_backend:
            self.backend.close()
        self.backend = backend
        self._owns_backend = owned
        self.model_info = info
        self.session = ChatSession(self.store, backend, self.settings, info)
        self._show(ChatScreen(self.session, self.paths.data_dir / "exports"))

    def save_settings(self) -> None:
        try:
            self.settings.save(self.paths.config_file)
        except (OSError, HuoziError) as exc:
            self.notify(f"settings not saved: {exc}", severity="error")

    # -- what the screens ask for ------------------------------------------------------------

    @on(SetupRequested)
    def _setup_requested(self, message: SetupRequested) -> None:
        self.open_setup(message.error, message.failed)

    @on(LoadRequested)
    def _load_requested(self, message: LoadRequested) -> None:
        self.load_model(message.planned)

    @on(ModelDownloaded)
    def _model_downloaded(self, message: ModelDownloaded) -> None:
        self.model_ready(message.planned, message.source)

    @on(BackendLoaded)
    def _backend_loaded(self, message: BackendLoaded) -> None:
        self.planned = message.planned
        self.open_chat(message.loaded.backend, message.loaded.info(message.planned))

    @on(SettingsRequested)
    def action_open_settings(self) -> None:
        self.push_screen(
            SettingsScreen(
                self.settings,
                self.paths,
                self.model_info,
                self.options.machine(),
                self.overrides,
            ),
            self.apply_settings,
        )

    def apply_settings(self, changed: Settings | None) -> None:
        """Save what the settings screen returned, and reload the model when the plan for the
        new settings loads something else (another file, context, GPU layers, MoE layers in
        RAM): the plan is made again from them, so no setting that changes the load is missed."""
        if changed is None:
            return
        before = replace(self.settings)
        for item in fields(Settings):
            setattr(self.settings, item.name, getattr(changed, item.name))
        self.overrides = overrides_after_edit(self.overrides, before, self.settings)
        self.save_settings()
        if self.planned is None or (self.model_info and self.model_info.location == "remote"):
            return  # a remote model: settings never reload it; the session reads them live
        machine = self.options.machine()
        try:
            planned = plan_saved_model(self.settings, self.overrides, self.paths, machine)
        except HuoziError as exc:
            self.notify(app_wording(exc), severity="error")
            self.open_setup()
            return
        if not self.planned.same_load(planned):
            self.load_model(planned)

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
            self.backend.close()


def create_app(
    *,
    settings: Settings | None = None,
    paths: Paths | None = None,
    store: ConversationStore | None = None,
    loader: BackendLoader = load_local,
    backend: ChatBackend | None = None,
    model_info: ModelInfo | None = None,
    options: AppOptions | None = None,
    overrides: LoadOverrides | None = None,
    model: ModelFile | None = None,
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
        overrides=overrides,
        model=model,
    )
