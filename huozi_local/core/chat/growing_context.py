"""A context that grows with the conversation instead of allocating the largest that fits.

The planner finds the largest context that fits (32,768 tokens: a 4 GiB KV cache for huozi3 in
f16), but a conversation of 200 tokens needs a fraction of it, and the rest of that memory is
the user's. The engine starts with the context a conversation needs and, when the tokens would
no longer fit, doubles it up to the planned maximum: the sequence's KV state is saved, the
context made again larger (the old one freed first, so the two never hold memory together) and
the state restored, which gives back exactly the same cache (`KvSession.save_state`).
"""

from __future__ import annotations

import time

from huozi_local.core.chat.kv_session import KvSession
from huozi_local.core.chat.llama_model import HuoziLlama
from huozi_local.core.chat.loader import padded_n_ctx
from huozi_local.core.devices.threadpool import CpuThreadpools
from huozi_local.core.errors import HuoziError

START_N_CTX = 2048
"""The context a conversation starts with when the plan leaves the size to huozi-local."""


def starting_n_ctx(capacity: int, fixed: bool) -> int:
    """The context to allocate at load: all of it when the user fixed the size, else the start
    size (or the capacity, when that is smaller)."""
    return capacity if fixed else min(capacity, START_N_CTX)


class ContextGrowth:
    """Grows one model's context for its session; the session calls it when it is full."""

    def __init__(self, llm: HuoziLlama, threads: tuple[int, int] | None = None) -> None:
        self._llm = llm
        self.session: KvSession | None = None
        self.threadpools: CpuThreadpools | None = None
        self.threads = threads
        """The thread counts to give a new context (the engine's set_threads keeps it)."""
        self.steps = 0
        self.last_seconds = 0.0
        """How long the last growth step took (save, new context, restore)."""

    def __call__(self, needed: int) -> None:
        session = self.session
        assert session is not None
        current = session.n_ctx
        target = min(session.capacity, padded_n_ctx(max(needed, 2 * current)))
        if target <= current:
            return
        started = time.perf_counter()
        state = session.save_state()
        tokens = session.cached_tokens()
        failure: HuoziError | None = None
        try:
            self._llm.replace_context(target)
        except HuoziError as exc:  # the old size was made again: go on with it
            failure = exc
        session.rebind(self._llm.context)
        self._reattach_threadpools()
        if not session.load_state(state, tokens):
            raise HuoziError("the KV cache could not be moved to the larger context")
        if failure is not None:
            raise failure
        self.steps += 1
        self.last_seconds = time.perf_counter() - started

    def _reattach_threadpools(self) -> None:
        """The old pools were attached to the freed context: new ones for the new context."""
        if self.threadpools is not None:
            self.threadpools.close()
        import llama_cpp

        ctx = self._llm.context
        if self.threads is not None:
            llama_cpp.llama_set_n_threads(ctx, *self.threads)
        self.threadpools = CpuThreadpools.attach(ctx)
