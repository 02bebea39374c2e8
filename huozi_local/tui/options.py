"""How the app reaches the network and the machine: what tests and the benchmark replace.

Its own module so that screens read the options without importing the app that owns them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from huozi_local.core.fetch.sources import DownloadSource, ProbeResult, SourceKind
from huozi_local.core.planning import hardware
from huozi_local.core.planning.hardware import Machine

MachineProbe = Callable[[], Machine]
"""Describes the machine the app plans for (tests describe one rather than read this one)."""

DiskProbe = Callable[[Path], int]
"""Free bytes on the disk that holds a folder (snapshots must not depend on this disk)."""

SourceProber = Callable[
    [Sequence[DownloadSource], threading.Event, Callable[[ProbeResult], None]],
    list[ProbeResult],
]
"""Probes download sources: (sources, cancel, on_result) -> results in the order given."""


def probe_for_real(
    sources: Sequence[DownloadSource],
    cancel: threading.Event,
    on_result: Callable[[ProbeResult], None],
) -> list[ProbeResult]:
    from huozi_local.core.fetch.sources import probe_sources

    return probe_sources(sources, cancel=cancel, on_result=on_result)


@dataclass(frozen=True)
class AppOptions:
    """How the first-run setup reaches the network, and what it may offer."""

    endpoint: str | None = None
    """Hub endpoint for downloads (a fake hub in tests); None is the real hub."""
    family: str = "huozi3"
    machine_probe: MachineProbe | None = None
    """Replaces hardware detection."""
    disk_probe: DiskProbe | None = None
    """Replaces the free-disk probe."""
    sources: tuple[DownloadSource, ...] | None = None
    """The download sources setup offers (fakes in tests); None: Hugging Face, the mirror and
    ModelScope, or only `endpoint` when that is given."""
    source_prober: SourceProber = probe_for_real
    """Replaces the network probes (snapshots must not depend on the network)."""

    def download_sources(self, saved_mirror: str = "") -> list[DownloadSource]:
        from huozi_local.core.fetch.sources import default_sources

        if self.sources is not None:
            return list(self.sources)
        if self.endpoint:
            return [DownloadSource(SourceKind.HF, self.endpoint)]
        return default_sources(saved_mirror)

    def machine(self) -> Machine:
        """The machine to plan for: the probe's, or this one's as detected."""
        if self.machine_probe is not None:
            return self.machine_probe()
        return hardware.detect_machine()
