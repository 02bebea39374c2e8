"""What the app does when a worker raises something nobody expected: no frozen screen.

A worker that dies of an exception other than the `HuoziError`s it handles used to leave its
screen as it was: Cancel armed, Start disabled, a loading bar waiting forever. Screens mix in
`RecoveringScreen`: Textual reports the dead worker (`exit_on_error=False`), the
traceback goes to a rotating log file under the app's data folder (HUOZI_HOME), the screen puts
its own controls back, and a dialog shows the message, the log's path, and Back / Retry. What
each worker is and what Retry does is given with the worker when it starts (`Recovery`).
"""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button
from textual.worker import Worker, WorkerState

from huozi_local.tui.widgets.plain import Label

LOG_MAX_BYTES = 1_000_000
LOG_BACKUPS = 3
FailureChoice = Literal["retry", "back"]


class FailureLog:
    """A rotating log of unexpected failures (1 MB, 3 old files kept): the details a bug report
    needs, without ever filling a disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_folder(cls, data_dir: Path) -> FailureLog:
        return cls(data_dir / "logs" / "huozi-local.log")

    def record(self, where: str, error: BaseException) -> Path | None:
        """Append the traceback; the path written, or None when even the log cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
            )
        except OSError:
            return None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        record = logging.LogRecord(
            "huozi_local.tui",
            logging.ERROR,
            __file__,
            0,
            f"unexpected error in {where}",
            None,
            (type(error), error, error.__traceback__),
        )
        try:
            handler.emit(record)
        finally:
            handler.close()
        return self.path


@runtime_checkable
class HasFailureLog(Protocol):
    failure_log: FailureLog


def describe(error: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    text = str(error).strip().splitlines()
    first = text[0][:200] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class WorkerFailed(ModalScreen[FailureChoice]):
    """The message, where the details are, and the two ways on. Stays until the user acts."""

    DEFAULT_CSS = """
    WorkerFailed { align: center middle; }
    WorkerFailed > Vertical {
        width: 80; max-width: 100%; height: auto; padding: 1 2;
        border: thick $error; background: $surface;
    }
    WorkerFailed #failed-title { text-style: bold; color: $text-error; }
    WorkerFailed Horizontal { height: auto; align-horizontal: right; margin-top: 1; }
    WorkerFailed Button { margin-left: 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back")]

    def __init__(self, where: str, message: str, log_path: Path | None) -> None:
        super().__init__()
        self.where = where
        self.message = message
        self.log_path = log_path

    def compose(self) -> ComposeResult:
        with Vertical():
            title = f"出错了 Something went wrong: {self.where}"  # names a model file
            yield Label(title, id="failed-title")
            yield Label(self.message, id="failed-message")
            details = (
                f"详情 Details: {self.log_path}"
                if self.log_path is not None
                else "The details could not be written to a log file."
            )
            yield Label(details, id="failed-log", classes="muted")
            with Horizontal():
                yield Button("重试 Retry", variant="primary", id="retry")
                yield Button("返回 Back", id="back")

    def on_mount(self) -> None:
        self.query_one("#retry", Button).focus()

    @on(Button.Pressed, "#retry")
    def action_retry(self) -> None:
        self.dismiss("retry")

    @on(Button.Pressed, "#back")
    def action_back(self) -> None:
        self.dismiss("back")


def _nothing() -> None:
    """The default of a recovery step a screen does not need."""


@dataclass(frozen=True)
class Recovery:
    """What a screen does when one of its workers dies of something unexpected.

    Given with the worker it belongs to (`RecoveringScreen.recover`), so Retry runs exactly the
    work that failed, whatever its method is called.
    """

    what: str
    """The work, as the dialog names it ("the download")."""
    retry: Callable[[], object]
    """Run the work again."""
    crashed: Callable[[], object] = _nothing
    """Put the screen's controls back as they are when nothing runs."""
    back: Callable[[], object] = _nothing
    """Leave the failed work behind (default: stay on the screen)."""


class RecoveringScreen(Screen[None]):
    """A screen whose workers never leave it frozen: each worker it starts is registered with
    its `Recovery` (what it is, how to put the controls back, what Retry and Back do)."""

    last_failure: str = ""

    def __init__(
        self, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name, id, classes)
        self._recoveries: dict[Worker[Any], Recovery] = {}

    def recover(self, worker: Worker[Any], recovery: Recovery) -> None:
        """Say what to do should `worker` die of an unexpected error."""
        self._recoveries[worker] = recovery

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state in (WorkerState.SUCCESS, WorkerState.CANCELLED):
            self._recoveries.pop(worker, None)
        if event.state is not WorkerState.ERROR or worker.error is None:
            return
        recovery = self._recoveries.pop(worker, None) or Recovery(
            worker.name or "a background task", retry=_nothing
        )
        error = worker.error
        app = self.app
        log = app.failure_log if isinstance(app, HasFailureLog) else None
        log_path = log.record(recovery.what, error) if log is not None else None
        self.last_failure = describe(error)
        recovery.crashed()

        def chosen(choice: FailureChoice | None) -> None:
            if choice == "retry":
                recovery.retry()
            else:
                recovery.back()

        app.push_screen(WorkerFailed(recovery.what, self.last_failure, log_path), chosen)
