"""One generation at a time on the model, in arrival order, fed to asyncio as it is produced.

llama.cpp holds one context: two replies cannot interleave on it, and the engine's generator blocks
for every token. So requests do not fail when they overlap: each becomes a job on a single worker
thread (FIFO, unlike a plain lock), whose events reach the request's coroutine through
`call_soon_threadsafe`. Every job carries its own cancel event: a client that disconnects, or the
server shutting down, stops its generation at the next token, or before it starts when it is
still waiting in line.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass

from huozi_local.core.chat.types import ReplyEvent, TextDelta


class ServerShuttingDown(Exception):
    """The job was cancelled because the server is stopping, not because its client left."""


@dataclass(eq=False)  # identity hashing: jobs live in a set
class _Job:
    produce: Callable[[threading.Event], Iterator[ReplyEvent]]
    cancel: threading.Event
    deliver: Callable[[ReplyEvent | BaseException | None], None]


class GenerationQueue:
    """A single worker thread that runs blocking reply generators one after another."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._active: set[_Job] = set()
        self._active_lock = threading.Lock()
        self._closing = threading.Event()
        self._worker = threading.Thread(target=self._run, name="huozi-generation", daemon=True)
        self._worker.start()

    async def events(
        self, produce: Callable[[threading.Event], Iterator[ReplyEvent]]
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Queue `produce(cancel)` and yield its events; leaving early cancels the generation."""
        if self._closing.is_set():
            raise ServerShuttingDown("the server is shutting down")
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[ReplyEvent | BaseException | None] = asyncio.Queue()

        def deliver(item: ReplyEvent | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass

        job = _Job(produce, threading.Event(), deliver)
        with self._active_lock:
            self._active.add(job)
        self._jobs.put(job)
        held: tuple[ReplyEvent | BaseException | None] | None = None  # (item,): taken, not handled
        try:
            while True:
                item = held[0] if held is not None else await inbox.get()
                held = None
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TextDelta) and not inbox.empty():
                    item, held = _coalesce(item, inbox)
                yield item
        finally:
            # Client gone, consumer stopped early or finished: in every case the model is free.
            job.cancel.set()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.cancel.is_set() or self._closing.is_set():
                    job.deliver(ServerShuttingDown("the server is shutting down"))
                    continue
                for event in job.produce(job.cancel):
                    job.deliver(event)
                job.deliver(None)
            except BaseException as exc:  # handed to the request, which answers with an error
                job.deliver(exc)
            finally:
                with self._active_lock:
                    self._active.discard(job)

    def cancel_all(self) -> None:
        """Stop the running generation and refuse the waiting ones (Ctrl-C)."""
        self._closing.set()
        with self._active_lock:
            for job in self._active:
                job.cancel.set()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and wait for the worker, so the model can be released safely."""
        self.cancel_all()
        self._jobs.put(None)
        self._worker.join(timeout)


def _coalesce(
    first: TextDelta, inbox: asyncio.Queue[ReplyEvent | BaseException | None]
) -> tuple[TextDelta, tuple[ReplyEvent | BaseException | None] | None]:
    """Merge the text deltas that queued up while the client was busy into one.

    A client slower than the model then gets the same text in fewer SSE chunks, so neither side
    spends its time encoding and parsing one JSON object per token. Returns the merged delta and
    the first queued item that is not a delta, as a 1-tuple (None when there is none): it may be
    the None that ends the stream, which must still be handled next.
    """
    texts = [first.text]
    while not inbox.empty():
        item = inbox.get_nowait()
        if not isinstance(item, TextDelta):
            return TextDelta("".join(texts)), (item,)
        texts.append(item.text)
    return TextDelta("".join(texts)), None
