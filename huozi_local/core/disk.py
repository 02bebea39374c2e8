"""Free space on the disk that holds a folder: the one probe every disk check goes through.

Downloads, imports, repairs and the setup screen all ask it, and tests that pretend a full disk
replace `free_disk_bytes` here, once, for all of them.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the disk that holds `folder`, which need not exist yet."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
