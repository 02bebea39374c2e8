"""One way to write a size: decimal units, three significant digits."""

from __future__ import annotations

import pytest

from huozi_local.core.units import format_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 kB"),
        (999_500, "1.00 MB"),
        (512_000_000, "512 MB"),
        (9_600_000_000, "9.60 GB"),
        (17_400_000_000, "17.4 GB"),  # huozi3-q2_k.gguf, as the hub lists it
        (26_600_000_000, "26.6 GB"),
        (2_500_000_000_000, "2.50 TB"),
    ],
)
def test_sizes_read_as_the_hub_and_disks_write_them(n: int, text: str) -> None:
    assert format_bytes(n) == text
