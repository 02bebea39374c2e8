"""What the setup screen's workers tell it (posted from worker threads, handled on the screen)."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from huozi_local.core.fetch.sources import DownloadSource, ProbeResult
from huozi_local.core.progress import Progress


class SetupProgress(Message):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress


class ModelOnDisk(Message):
    """A download or an import finished: this file is ready to load."""

    def __init__(
        self,
        path: Path,
        spec: str,
        label: str,
        quant: str,
        source: DownloadSource | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.spec = spec
        self.label = label
        self.quant = quant
        self.source = source
        """Where it was downloaded from (None: imported)."""


class WorkFailed(Message):
    """A download or import stopped: `paused` when cancelled (the bytes are kept)."""

    def __init__(self, error: str, *, paused: bool = False) -> None:
        super().__init__()
        self.error = error
        self.paused = paused


class SourceProbed(Message):
    def __init__(self, result: ProbeResult) -> None:
        super().__init__()
        self.result = result


class ProbesFinished(Message):
    pass
