"""Where each byte of a file being downloaded goes: its place in the final file, or a side file.

For a file that loads as it is, every byte goes to the same offset of the final file. For an
official legacy huozi3 file the merged layout is known once its header has arrived
(`repair_layout`): each range of tensor data lands at its place in the repaired file, whose new
header huozi-local writes itself, and the few bytes the repaired file does not keep (the old
header, alignment padding) go to a small side file. The map is fixed, so the source can be read
back in its own byte order to check the hub's sha256 of the original.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from huozi_local.core.gguf.header import GGUFFile
from huozi_local.core.gguf.repair_layout import RepairLayout, repair_layout

MAIN, SIDE = 0, 1


@dataclass(frozen=True)
class Run:
    """`n` source bytes from `src` on go to file `dest` (MAIN or SIDE) at `at`."""

    src: int
    n: int
    dest: int
    at: int


@dataclass(frozen=True)
class StreamLayout:
    source_size: int
    main_size: int
    side_size: int
    prelude: bytes
    """What huozi-local writes at the start of the final file itself (the new header)."""
    runs: tuple[Run, ...]
    repair: RepairLayout | None = None

    @property
    def kind(self) -> str:
        return "repair" if self.repair is not None else "identity"

    @classmethod
    def identity(cls, size: int) -> StreamLayout:
        return cls(size, size, 0, b"", (Run(0, size, MAIN, 0),))

    @classmethod
    def repaired(cls, gguf: GGUFFile, source_sha256: str) -> StreamLayout:
        """The in-stream repair of `gguf` (its header read from the download's head)."""
        layout = repair_layout(gguf, source_sha256)
        runs: list[Run] = []
        side = 0
        at = 0
        for segment in layout.segments:  # in source order
            if segment.src_offset > at:
                runs.append(Run(at, segment.src_offset - at, SIDE, side))
                side += segment.src_offset - at
            runs.append(Run(segment.src_offset, segment.n_bytes, MAIN, segment.dst_offset))
            at = segment.src_offset + segment.n_bytes
        if at < gguf.file_size:
            runs.append(Run(at, gguf.file_size - at, SIDE, side))
            side += gguf.file_size - at
        header = layout.header
        return cls(gguf.file_size, header.total_size, side, header.data, tuple(runs), layout)

    @cached_property
    def _starts(self) -> list[int]:
        return [run.src for run in self.runs]

    def pieces(self, src: int, n: int) -> Iterator[tuple[int, int, int, int]]:
        """(dest, at, offset into the n bytes, length) for source bytes [src, src + n)."""
        i = max(0, bisect.bisect_right(self._starts, src) - 1)
        done = 0
        while done < n and i < len(self.runs):
            run = self.runs[i]
            here = src + done
            inside = here - run.src
            if inside >= run.n:
                i += 1
                continue
            length = min(run.n - inside, n - done)
            yield run.dest, run.at + inside, done, length
            done += length
            i += 1
        if done < n:
            raise ValueError(f"bytes {src + done}..{src + n} lie outside the file")
