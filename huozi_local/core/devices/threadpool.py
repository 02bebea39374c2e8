"""Persistent CPU threadpools for a llama.cpp context, as llama.cpp's own tools attach them.

Without one, ggml makes a threadpool for every graph it computes. With OpenMP (the Linux wheels)
that is an allocation and a CPU-mask setup per token, measured at ~20 us a token (2-3%) on a
0.8 ms/token model; without OpenMP (macOS builds, among others) it also starts and joins every
worker thread on every token. llama-bench, llama-cli and llama-completion create threadpools once
and attach them (`llama_attach_threadpool`); so does the engine, one for single-token decodes
(n_threads) and one for prompt batches (n_threads_batch).

ggml sizes a graph's thread team from the context's thread count and indexes the pool's workers
with it, so a pool must never be smaller than that count: change thread counts only through
`CpuThreadpools.set_threads`, which attaches pools of the new sizes.

The functions come from the CPU backend through ggml's registry
(`ggml_backend_reg_get_proc_address`), as llama-bench finds them, so a build whose CPU backend is
a dynamically loaded module works too; a build without them gets None and keeps ggml's default.
"""

from __future__ import annotations

import ctypes
from typing import Any

from huozi_local.core.devices.ggml import ggml

GGML_MAX_N_THREADS = 512  # ggml.h, for the vendored llama.cpp of llama-cpp-python 0.3.36


class ThreadpoolParams(ctypes.Structure):
    """ggml.h: struct ggml_threadpool_params."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


_NEW = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(ThreadpoolParams))
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class CpuThreadpools:
    """The two threadpools attached to one context; `close` after the context is freed."""

    def __init__(self, ctx: Any, attach: Any, new: Any, free: Any) -> None:
        self._ctx = ctx
        self._attach = attach
        self._new = new
        self._free = free
        self._pools: list[int] = []

    @classmethod
    def attach(cls, ctx: Any) -> CpuThreadpools | None:
        """Pools sized to the context's thread counts, attached; None when ggml has no API."""
        import llama_cpp

        lib = ggml()
        try:
            reg = lib.function("ggml_backend_reg_by_name")(b"CPU")
            proc = lib.function("ggml_backend_reg_get_proc_address")
            attach = lib.function("llama_attach_threadpool")
        except AttributeError:
            return None
        new = proc(reg, b"ggml_threadpool_new") if reg else None
        free = proc(reg, b"ggml_threadpool_free") if reg else None
        if not (new and free):
            return None
        pools = cls(ctx, attach, _NEW(new), _FREE(free))
        if not pools.set_threads(
            int(llama_cpp.llama_n_threads(ctx)), int(llama_cpp.llama_n_threads_batch(ctx))
        ):
            return None
        return pools

    def set_threads(self, n_threads: int, n_threads_batch: int) -> bool:
        """Use these thread counts from now on, each with its own pool (False: none was made)."""
        import llama_cpp

        made = [self._make(n_threads)]
        made.append(made[0] if n_threads_batch == n_threads else self._make(n_threads_batch))
        if not all(made):
            for pool in {p for p in made if p}:
                self._free(pool)
            return False
        llama_cpp.llama_set_n_threads(self._ctx, n_threads, n_threads_batch)
        self._attach(self._ctx, made[0], made[1])
        self._release()  # the context no longer refers to the old pools
        self._pools = list(dict.fromkeys(made))
        return True

    def _make(self, n_threads: int) -> int:
        params = ThreadpoolParams()
        params.n_threads = max(1, n_threads)
        params.poll = 50  # ggml_threadpool_params_default: hybrid polling
        return int(self._new(ctypes.byref(params)) or 0)

    def _release(self) -> None:
        for pool in self._pools:
            self._free(pool)
        self._pools = []

    def close(self) -> None:
        """Free the pools; the context must be freed (or detached) first."""
        self._release()
