"""Free space on the disk that holds a folder (the one probe every disk check goes through), and
making a write durable before a step that relies on it.

Downloads, imports, repairs and the setup screen all ask `free_disk_bytes`, and tests that
pretend a full disk replace it here, once, for all of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def sync_to_disk(path: Path) -> None:
    """fsync a file, or a folder (so a rename in it survives a power cut).

    Before a step that destroys the only other copy (deleting a verified original, replacing a
    file) the new bytes must be on the disk itself, not only in the page cache. Best effort where
    the platform cannot: folders cannot be opened on Windows, and some filesystems refuse fsync
    on folders; the data was still written.
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder`, which need not exist yet."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
