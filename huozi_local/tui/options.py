"""How the app reaches the network and the machine: what tests and the benchmark replace.

Its own module so that screens read the options without importing the app that owns them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huozi_local.core.planning.hardware import Machine, detect_machine

MachineProbe = Callable[[], Machine]
"""Describes the machine the app plans for (tests describe one rather than read this one)."""

DiskProbe = Callable[[Path], int]
"""Free bytes on the disk that holds a folder (snapshots must not depend on this disk)."""


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

    def machine(self) -> Machine:
        """The machine to plan for: the probe's, or this one's as detected."""
        if self.machine_probe is not None:
            return self.machine_probe()
        return detect_machine()
