"""First run: this machine, the recommended quant, where to download from, or a file on disk.

The screen opens with "Download & start" focused on the recommended quant, so Enter alone gets a
new user to a chat. Meanwhile one worker probes every download source at once (Hugging Face, a
mirror, ModelScope) and the first that answers is preselected; Enter pressed before the probes
are in waits for them. The download worker resumes, verifies and repairs through
`core.fetch.download.download_model`, its progress reports replacing each other in one bar.

A failure stays on screen with the reason and the ways on (retry, which resumes; another
source; a file on disk) until the user acts. A file already on disk is imported through
`core.fetch.adopt.import_model`. A worker that raises something unexpected is shown with the
path of the log that holds its traceback (`RecoveringScreen`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import (
    Button,
    Footer,
    Input,
    OptionList,
    ProgressBar,
    RadioSet,
)
from textual.widgets.option_list import Option

from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.fetch.sources import DownloadSource, ProbeResult, SourceKind
from huozi_local.core.loading.load import PlannedLoad
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.progress import Progress, Stage
from huozi_local.tui.failures import RecoveringScreen, Recovery
from huozi_local.tui.messages import LoadRequested, ModelDownloaded
from huozi_local.tui.model_choice import plan_file
from huozi_local.tui.options import AppOptions
from huozi_local.tui.remedies import app_wording
from huozi_local.tui.screens.setup_messages import (
    ModelOnDisk,
    ProbesFinished,
    SetupProgress,
    SourceProbed,
    WorkFailed,
)
from huozi_local.tui.setup_plan import SetupOption, SetupReport, build_setup_report
from huozi_local.tui.widgets.failure_panel import FailurePanel
from huozi_local.tui.widgets.plain import Label, Static, one_line
from huozi_local.tui.widgets.source_picker import SourcePicker

STAGE_LABELS: dict[Stage, str] = {
    "download": "下载 Downloading",
    "verify": "校验 Verifying",
    "repair": "修复 Repairing",
    "copy": "复制 Copying",
}
CHECKING_SOURCES = "检测下载来源 Checking the download sources first…"
NEXT_STEPS = {
    "download": (
        "下一步 Next: Retry (a partial download resumes), choose another source above, "
        "or use a .gguf file you already have (below)"
    ),
    "import": "下一步 Next: check the path and Retry, or download the model instead",
    "load": (
        "下一步 Next: Retry loading it (after freeing memory, or with fewer GPU layers in "
        "Settings), download a model above, or use another .gguf file (below)"
    ),
}
FAILURE_ACTIONS = [
    ("retry", "重试 Retry"),
    ("source", "换来源 Other source"),
    ("file", "用本地文件 Use a file"),
]
WORKER_NAMES = {
    "download": "the download",
    "import_file": "the import of a file",
    "probe": "checking the download sources",
}


class SetupScreen(RecoveringScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_download", "Cancel"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]

    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        options: AppOptions,
        machine: Machine,
        error: str = "",
        failed_load: PlannedLoad | None = None,
    ) -> None:
        super().__init__()
        self.paths = paths
        self.settings = settings
        """The saved settings, read here and never changed: the app saves what setup chose."""
        self.options = options
        self.machine = machine
        self.report: SetupReport = build_setup_report(
            options.family, paths, settings, machine, disk_probe=options.disk_probe
        )
        self.sources = options.download_sources(settings.mirror_endpoint)
        self.cancel_event: threading.Event | None = None
        """Set while a download or import runs; setting it stops that work."""
        self.probe_cancel = threading.Event()
        self.probes_done = False
        self.start_pending = False
        self.stages_seen: list[Stage] = []
        self.last_work = "download" if failed_load is None else "load"
        self.initial_error = error
        self.failed_load = failed_load
        """The model that would not load, which Retry loads again (None: the error is not that)."""

    def compose(self) -> ComposeResult:
        report = self.report
        with VerticalScroll():
            yield Label(
                "欢迎使用活字 Welcome to huozi-local: first-run setup", classes="section-title"
            )
            yield Label("本机 This machine", classes="section-title")
            for line in report.hardware_lines:
                yield Label(line)
            yield Label("推荐 Recommended", classes="section-title")
            yield Static(report.recommendation, id="recommendation")
            yield Label("选择 Choose a quant (↑/↓, Enter)", classes="section-title")
            yield OptionList(
                *[
                    Option(one_line(o.line), id=o.quant, disabled=not o.usable)
                    for o in report.options
                ],
                id="quants",
                markup=False,
            )
            yield Static(report.disk_line, id="disk")
            yield Label("下载来源 Download from", classes="section-title")
            yield SourcePicker(self.sources, _saved_kind(self.settings.download_source))
            with Horizontal(id="setup-buttons"):
                yield Button("下载并开始 Download & start", variant="primary", id="start")
                yield Button("取消 Cancel", id="cancel", disabled=True)
            yield Label("", id="stage")
            yield ProgressBar(total=None, show_eta=False, id="download-progress")
            yield Label("", id="detail", classes="muted")
            yield FailurePanel(FAILURE_ACTIONS, id="failure")
            yield Label("已有模型文件 Already have the .gguf file?", classes="section-title")
            with Horizontal(id="import-row"):
                yield Input(placeholder="/path/to/huozi3-q4_0.gguf", id="import-path")
                yield Button("导入 Import", id="import")
        yield Footer()

    def on_mount(self) -> None:
        quants = self.query_one(OptionList)
        recommended = self.report.recommended
        if recommended is not None:
            quants.highlighted = quants.get_option_index(recommended.quant)
        self.query_one(ProgressBar).display = False
        self.query_one("#start", Button).focus()
        self.start_probes()
        if self.initial_error:
            self._show_failure(self.initial_error)

    def on_unmount(self) -> None:
        self.probe_cancel.set()

    # -- which source --------------------------------------------------------------------------

    def start_probes(self) -> None:
        self.probes_done = False
        # A probe that dies: whatever answered counts, the rest stay "checking".
        recovery = Recovery(WORKER_NAMES["probe"], self.start_probes, crashed=self._probes_in)
        self.recover(self.probe(), recovery)

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def probe(self) -> None:
        def report(result: ProbeResult) -> None:
            self.post_message(SourceProbed(result))

        self.options.source_prober(self.sources, self.probe_cancel, report)
        self.post_message(ProbesFinished())

    def on_source_probed(self, message: SourceProbed) -> None:
        self.query_one(SourcePicker).show_result(message.result)

    def on_probes_finished(self, _message: ProbesFinished) -> None:
        self._probes_in()

    def _probes_in(self) -> None:
        self.probes_done = True
        self.query_one(SourcePicker).preselect()
        if self.start_pending:
            self.start_pending = False
            self.start()

    # -- which quant ---------------------------------------------------------------------------

    @property
    def chosen(self) -> SetupOption | None:
        quants = self.query_one(OptionList)
        if quants.highlighted is None:
            return self.report.recommended
        option_id = quants.get_option_at_index(quants.highlighted).id
        return next((o for o in self.report.options if o.quant == option_id), None)

    @on(OptionList.OptionHighlighted)
    def _quant_highlighted(self) -> None:
        self.query_one("#disk", Static).update(self.report.disk_line_for(self.chosen))

    # -- download ------------------------------------------------------------------------------

    @on(OptionList.OptionSelected)
    @on(Button.Pressed, "#start")
    def start(self) -> None:
        option = self.chosen
        if option is None or not option.usable:
            self.notify("That quant will not fit on this machine", severity="error")
            return
        if self.cancel_event is not None:
            return
        if not self.probes_done:
            self.start_pending = True
            self.query_one("#stage", Label).update(CHECKING_SOURCES)
            return
        source = self.query_one(SourcePicker).selected or self.sources[0]
        self._begin("download", f"{STAGE_LABELS['download']} {option.spec} ← {source.label}")
        assert self.cancel_event is not None
        worker = self.download(option, source, self.cancel_event)
        self.recover(worker, Recovery(WORKER_NAMES["download"], self.start, self._work_crashed))

    @work(thread=True, exclusive=True, group="work", exit_on_error=False)
    def download(
        self, option: SetupOption, source: DownloadSource, cancel: threading.Event
    ) -> None:
        from huozi_local.core.fetch.download import DEFAULT_CONNECTIONS, download_model

        connections = self.settings.download_connections or DEFAULT_CONNECTIONS
        try:
            result = download_model(
                option.spec,
                self.paths,
                source=source.protocol,
                endpoint=source.endpoint,
                progress=self._report,
                cancel=cancel,
                connections=connections,
            )
        except Cancelled as exc:
            self.post_message(WorkFailed(f"cancelled: {exc}", paused=True))
            return
        except HuoziError as exc:
            self.post_message(WorkFailed(app_wording(exc)))
            return
        self.post_message(
            ModelOnDisk(result.path, option.spec, option.family, option.quant, source)
        )

    def _report(self, progress: Progress) -> None:
        self.post_message(SetupProgress(progress))

    # -- a file on disk ------------------------------------------------------------------------

    @on(Input.Submitted, "#import-path")
    @on(Button.Pressed, "#import")
    def start_import(self) -> None:
        text = self.query_one("#import-path", Input).value.strip()
        if self.cancel_event is not None:
            return
        if not text:
            self.query_one("#import-path", Input).focus()
            self.notify("Type the path of the .gguf file first", severity="warning")
            return
        self._begin("import", f"导入 Importing {text}")
        assert self.cancel_event is not None
        worker = self.import_file(Path(text).expanduser(), self.cancel_event)
        recovery = Recovery(WORKER_NAMES["import_file"], self.start_import, self._work_crashed)
        self.recover(worker, recovery)

    @work(thread=True, exclusive=True, group="work", exit_on_error=False)
    def import_file(self, path: Path, cancel: threading.Event) -> None:
        from huozi_local.core.fetch.adopt import import_model

        try:
            result = import_model(path, self.paths, progress=self._report, cancel=cancel)
        except Cancelled:
            self.post_message(WorkFailed("import cancelled: nothing was added", paused=True))
            return
        except HuoziError as exc:
            self.post_message(WorkFailed(app_wording(exc)))
            return
        identity = result.identity
        label = identity.family or result.path.name
        self.post_message(ModelOnDisk(result.path, result.spec, label, identity.quant or ""))

    # -- what the workers said -----------------------------------------------------------------

    def on_setup_progress(self, message: SetupProgress) -> None:
        progress = message.progress
        if not self.stages_seen or self.stages_seen[-1] != progress.stage:
            self.stages_seen.append(progress.stage)
        self.query_one(ProgressBar).update(total=progress.total, progress=progress.done)
        self.query_one("#stage", Label).update(STAGE_LABELS.get(progress.stage, progress.stage))
        self.query_one("#detail", Label).update(progress.message)

    def on_model_on_disk(self, message: ModelOnDisk) -> None:
        self._end()
        try:
            planned = plan_file(
                message.path,
                label=message.label,
                quant=message.quant,
                spec=message.spec,
                settings=self.settings,
                machine=self.machine,
                paths=self.paths,
            )
        except HuoziError as exc:
            self._show_failure(app_wording(exc))
            return
        self.post_message(ModelDownloaded(planned, message.source))

    def on_work_failed(self, message: WorkFailed) -> None:
        self._end()
        if message.paused:
            self.query_one("#stage", Label).update(
                "已暂停 Paused: press Download to resume"
                if self.last_work == "download"
                else "已取消 Cancelled"
            )
            self.notify(message.error, severity="warning", timeout=10)
            return
        self._show_failure(message.error)

    def _show_failure(self, reason: str) -> None:
        self.query_one(ProgressBar).display = False  # stopped, not pulsing
        self.query_one("#stage", Label).update("失败 Failed")
        self.query_one("#detail", Label).update("")
        self.query_one(FailurePanel).show(reason, NEXT_STEPS.get(self.last_work, ""))

    @on(FailurePanel.Chosen)
    def _failure_action(self, message: FailurePanel.Chosen) -> None:
        panel = self.query_one(FailurePanel)
        panel.hide()
        if message.action == "retry":
            if self.last_work == "load" and self.failed_load is not None:
                self.post_message(LoadRequested(self.failed_load))
                return
            if self.last_work == "import":
                self.start_import()
            else:
                self.start()
        elif message.action == "source":
            self.query_one(RadioSet).focus()
        elif message.action == "file":
            self.query_one("#import-path", Input).focus()

    # -- running or not ------------------------------------------------------------------------

    def _begin(self, work_kind: str, stage: str) -> None:
        self.last_work = work_kind
        self.cancel_event = threading.Event()
        self.query_one(FailurePanel).hide()
        self.query_one("#start", Button).disabled = True
        self.query_one("#import", Button).disabled = True
        self.query_one("#cancel", Button).disabled = False
        bar = self.query_one(ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.query_one("#stage", Label).update(stage)
        self.query_one("#detail", Label).update("")

    def _end(self) -> None:
        self.cancel_event = None
        self.query_one("#start", Button).disabled = False
        self.query_one("#import", Button).disabled = False
        self.query_one("#cancel", Button).disabled = True

    @on(Button.Pressed, "#cancel")
    def action_cancel_download(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()
        elif self.start_pending:
            self.start_pending = False
            self.query_one("#stage", Label).update("")

    def _work_crashed(self) -> None:
        """A download or import died of something unexpected: controls back, marked failed."""
        self._end()
        self.query_one(ProgressBar).display = False
        self.query_one("#stage", Label).update("失败 Failed")


def _saved_kind(text: str) -> SourceKind | None:
    try:
        return SourceKind.parse(text) if text else None
    except HuoziError:
        return None
