"""First run: this machine, the recommended quant and offload with the reason, then download.

Confirming starts one worker that downloads (with resume: a cancelled download keeps its bytes),
verifies and repairs through `core.fetch.download.download_model`; its progress reports replace each
other in one bar (stage, bytes, speed, time left). When the file is ready the app loads it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.progress import Progress, Stage
from huozi_local.tui.messages import ModelDownloaded
from huozi_local.tui.model_choice import choice_for
from huozi_local.tui.options import AppOptions
from huozi_local.tui.setup_plan import SetupOption, SetupReport, build_setup_report

STAGE_LABELS: dict[Stage, str] = {
    "download": "下载 Downloading",
    "verify": "校验 Verifying",
    "repair": "修复 Repairing",
}


class SetupProgress(Message):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress


class SetupFinished(Message):
    def __init__(self, option: SetupOption, path: Path | None, error: str = "") -> None:
        super().__init__()
        self.option = option
        self.path = path
        self.error = error


class SetupScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_download", "Cancel download"),
        Binding("ctrl+q", "app.quit", "Quit"),
    ]

    def __init__(self, paths: Paths, settings: Settings, options: AppOptions) -> None:
        super().__init__()
        self.paths = paths
        self.settings = settings
        self.options = options
        self.report: SetupReport = build_setup_report(
            options.family, paths, settings, options.machine(), disk_probe=options.disk_probe
        )
        self.cancel_event: threading.Event | None = None
        self.stages_seen: list[Stage] = []

    def compose(self) -> ComposeResult:
        report = self.report
        with VerticalScroll():
            yield Label(
                "欢迎使用活字 Welcome to huozi-local: first-run setup", classes="section-title"
            )
            yield Label("本机 This machine", classes="section-title")
            for line in report.hardware_lines:
                yield Label(line, markup=False)
            yield Label("推荐 Recommended", classes="section-title")
            yield Static(report.recommendation, id="recommendation", markup=False)
            yield Label("选择 Choose a quant (↑/↓, Enter)", classes="section-title")
            yield OptionList(
                *[Option(o.line, id=o.quant, disabled=not o.usable) for o in report.options],
                id="quants",
            )
            yield Static(report.disk_line, id="disk", markup=False)
            with Horizontal(id="setup-buttons"):
                yield Button("下载并开始 Download & start", variant="primary", id="start")
                yield Button("取消 Cancel", id="cancel", disabled=True)
            yield Label("", id="stage")
            yield ProgressBar(total=None, show_eta=False, id="download-progress")
            yield Label("", id="detail", classes="muted", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        quants = self.query_one(OptionList)
        recommended = self.report.recommended
        if recommended is not None:
            quants.highlighted = quants.get_option_index(recommended.quant)
        self.query_one(ProgressBar).display = False
        quants.focus()

    @property
    def chosen(self) -> SetupOption | None:
        quants = self.query_one(OptionList)
        if quants.highlighted is None:
            return self.report.recommended
        option_id = quants.get_option_at_index(quants.highlighted).id
        return next((o for o in self.report.options if o.quant == option_id), None)

    @on(OptionList.OptionSelected)
    @on(Button.Pressed, "#start")
    def start(self) -> None:
        option = self.chosen
        if option is None or not option.usable:
            self.notify("That quant will not fit on this machine", severity="error")
            return
        if self.cancel_event is not None:
            return
        self.cancel_event = threading.Event()
        self.query_one("#start", Button).disabled = True
        self.query_one("#cancel", Button).disabled = False
        self.query_one(ProgressBar).display = True
        self.query_one("#stage", Label).update(f"{STAGE_LABELS['download']} {option.spec}")
        self.download(option, self.cancel_event)

    @work(thread=True, exclusive=True, exit_on_error=False)
    def download(self, option: SetupOption, cancel: threading.Event) -> None:
        from huozi_local.core.fetch.download import download_model

        def report(progress: Progress) -> None:
            self.post_message(SetupProgress(progress))

        try:
            result = download_model(
                option.spec,
                self.paths,
                endpoint=self.options.endpoint,
                progress=report,
                cancel=cancel,
            )
        except Cancelled as exc:
            self.post_message(SetupFinished(option, None, f"cancelled: {exc}"))
            return
        except HuoziError as exc:
            self.post_message(SetupFinished(option, None, str(exc)))
            return
        self.post_message(SetupFinished(option, result.path))

    def on_setup_progress(self, message: SetupProgress) -> None:
        progress = message.progress
        if not self.stages_seen or self.stages_seen[-1] != progress.stage:
            self.stages_seen.append(progress.stage)
        bar = self.query_one(ProgressBar)
        bar.update(total=progress.total, progress=progress.done)
        stage = STAGE_LABELS.get(progress.stage, progress.stage)
        self.query_one("#stage", Label).update(stage)
        self.query_one("#detail", Label).update(progress.message)

    def on_setup_finished(self, message: SetupFinished) -> None:
        self.cancel_event = None
        self.query_one("#start", Button).disabled = False
        self.query_one("#cancel", Button).disabled = True
        if message.path is None:
            resumable = message.error.startswith("cancelled")
            self.query_one("#stage", Label).update(
                "已暂停 Paused: press Download to resume" if resumable else "失败 Failed"
            )
            self.notify(
                message.error,
                severity="warning" if resumable else "error",
                timeout=10,
                markup=False,
            )
            return
        option = message.option
        try:
            choice = choice_for(
                message.path,
                option.family,
                option.quant,
                self.settings,
                machine=self.options.machine(),
            )
        except HuoziError as exc:
            self.notify(str(exc), severity="error", timeout=10, markup=False)
            return
        self.post_message(ModelDownloaded(choice, option.spec))

    @on(Button.Pressed, "#cancel")
    def action_cancel_download(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()
