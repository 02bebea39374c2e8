"""How much disk a download takes at its peak and what it leaves, for the check and the screens.

A legacy (split-expert) file is repaired into a second file before the verified original is
deleted, so for a moment both are on disk: the peak is the rest of the download plus the
repaired copy, while what stays afterwards is one file. The download refuses to start when the
peak does not fit, and setup shows both numbers, so nobody learns this 20 GB in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiskNeed:
    size_bytes: int
    """The file as published."""
    have_bytes: int
    """Already on disk in a `.part` file (a paused download)."""
    repaired_copy_bytes: int
    """The repaired copy written while the original still exists (0 when no repair)."""
    free_bytes: int

    @property
    def download_bytes(self) -> int:
        return max(0, self.size_bytes - self.have_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.download_bytes + self.repaired_copy_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.free_bytes

    @property
    def left_after_bytes(self) -> int:
        """Free space once finished: the repaired copy replaced the original (same size)."""
        return self.free_bytes - self.download_bytes


def disk_need(size: int, *, legacy: bool, have: int = 0, free: int) -> DiskNeed:
    return DiskNeed(size, min(have, size), size if legacy else 0, free)
