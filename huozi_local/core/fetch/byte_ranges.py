"""Which byte ranges of a file are here, and handing out the rest to several connections.

`Ranges` is a set of disjoint half-open byte ranges (what a download holds, in the source
file's coordinates); `WorkQueue` hands the missing ones out in order, in chunks, and when none
is left splits the largest range still being fetched so that an idle connection takes its back
half: one slow connection cannot hold the end of a download alone.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


class Ranges:
    """Disjoint, sorted [start, end) ranges; adjacent ones are merged. Not thread-safe."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # the first range that ends at or after start
        j = bisect.bisect_right(self._starts, end)  # ranges [i, j) touch or overlap
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def total(self) -> int:
        return sum(e - s for s, e in self)

    def prefix_end(self) -> int:
        """How far from 0 the ranges run without a gap."""
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    def missing(self, size: int) -> list[tuple[int, int]]:
        """The ranges of [0, size) not held."""
        gaps = []
        at = 0
        for start, end in self:
            if start > at:
                gaps.append((at, min(start, size)))
            at = max(at, end)
        if at < size:
            gaps.append((at, size))
        return [(s, e) for s, e in gaps if e > s]

    def to_json(self) -> list[list[int]]:
        return [[s, e] for s, e in self]

    @classmethod
    def from_json(cls, data: object, size: int) -> Ranges:
        """Ranges as `to_json` wrote them; ValueError for anything else (a damaged record)."""
        if not isinstance(data, list):
            raise ValueError("not a list of ranges")
        ranges = cls()
        for item in data:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not all(type(x) is int for x in item)
                or not 0 <= item[0] < item[1] <= size
            ):
                raise ValueError(f"not a byte range of a {size}-byte file: {item!r}")
            ranges.add(item[0], item[1])
        return ranges


@dataclass
class Task:
    """One connection's range: bytes [start, end), of which [start, pos) have arrived. `end`
    moves down when the range is split (under the queue's lock)."""

    start: int
    end: int
    pos: int

    @property
    def remaining(self) -> int:
        return self.end - self.pos


class WorkQueue:
    """Missing ranges as chunks for several connections, and splitting of the tail."""

    def __init__(self, missing: Iterable[tuple[int, int]], chunk: int, min_split: int) -> None:
        self.lock = threading.Condition()
        """Held while a task's `pos`/`end` change; notified when a range is finished or given
        back."""
        self._pending: list[Task] = []
        for start, end in missing:
            for at in range(start, end, chunk):
                self._pending.append(Task(at, min(end, at + chunk), at))
        self._pending.reverse()  # pop() from the end hands out the lowest offsets first
        self._active: list[Task] = []
        self._min_split = min_split
        self.splits = 0

    def take(self, stopped: Callable[[], bool] = lambda: True) -> Task | None:
        """The next chunk, else the back half of the range with the most bytes still to come.

        None when every range is done or, while other connections still hold ranges too small
        to split, once `stopped()` says so. Until then it waits: one of those connections may
        stop (told to back off) and give its range back, and with every other connection gone
        that range would never be fetched. The default returns at once.
        """
        with self.lock:
            while True:
                if self._pending:
                    task = self._pending.pop()
                    break
                busiest = max(self._active, key=lambda t: t.remaining, default=None)
                if busiest is None:
                    return None
                if busiest.remaining >= 2 * self._min_split:
                    middle = busiest.pos + busiest.remaining // 2
                    task = Task(middle, busiest.end, middle)
                    busiest.end = middle
                    self.splits += 1
                    break
                if stopped():
                    return None
                self.lock.wait(0.1)
            self._active.append(task)
            return task

    def finish(self, task: Task) -> None:
        with self.lock:
            self._active.remove(task)
            self.lock.notify_all()

    def give_back(self, task: Task) -> None:
        """A connection stops before its range is done: the rest goes back first in line."""
        with self.lock:
            self._active.remove(task)
            if task.pos < task.end:
                self._pending.append(Task(task.pos, task.end, task.pos))
            self.lock.notify_all()
