"""What a download did, for the command line, the app and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    sha256: str | None
    bytes_downloaded: int
    resumed_from: int
    repaired: bool
    changes: list[str] = field(default_factory=list)
    already_present: bool = False
    original_path: Path | None = None
    spec: str = ""
    connections: int = 1
    seconds: float = 0.0
