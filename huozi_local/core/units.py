"""How sizes are written for people: one formatter, one unit convention.

Decimal units (1 GB = 10^9 bytes), because that is how the hub and ModelScope list the files,
how disks are sold and how the model's README gives its memory figures (its 28 GB / 18 GB /
9.6 GB only agree with each other read as 10^9). So the same file reads 17.4 GB in `models`, in
setup, in a disk-space error and on the hub's page.
"""

from __future__ import annotations

_UNITS = ("kB", "MB", "GB", "TB")


def format_bytes(n: float) -> str:
    """Three significant digits: '17.4 GB', '9.60 GB', '512 MB', '800 B'."""
    if abs(n) < 999.5:
        return f"{n:.0f} B"
    value = float(n)
    unit = _UNITS[0]
    for candidate in _UNITS:
        value /= 1000
        unit = candidate
        if abs(value) < 999.5:
            break
    digits = 2 if abs(value) < 9.995 else 1 if abs(value) < 99.95 else 0
    return f"{value:.{digits}f} {unit}"
