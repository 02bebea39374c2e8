"""A rich progress bar fed by the core's Progress reports, one bar per stage (download, verify,
repair, ...): every long-running command shows its work the same way."""

from __future__ import annotations

from typing import Any, TextIO

from huozi_local.core.progress import Progress

_LABELS = {
    "download": "downloading",
    "verify": "verifying",
    "repair": "repairing",
    "copy": "copying",
}


class ProgressBar:
    """Thread-safe: `update` may be called from a worker thread; rich locks its own state.

    Drawn only on a terminal: piped or captured output gets the final lines alone, so an error
    stays the one line a script can read.
    """

    def __init__(self, stream: TextIO) -> None:
        self.enabled = stream.isatty()
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        from huozi_local.commands._console import text_console

        # markup=False: the note is the core's message, which names files and servers.
        self._progress = RichProgress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            console=text_console(stream),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, report: Progress) -> None:
        if not self.enabled:
            return
        task = self._tasks.get(report.stage)
        note = report.message if report.stage != "download" else ""
        if task is None:
            task = self._progress.add_task(
                _LABELS.get(report.stage, report.stage),
                total=report.total,
                completed=report.done,
                note=note,
            )
            self._tasks[report.stage] = task
            return
        self._progress.update(task, total=report.total, completed=report.done, note=note)
