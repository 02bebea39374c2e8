"""llama-cpp-python's `Llama` with what huozi-local needs from llama.cpp's model params.

`Llama` takes no progress argument and leaves `devices`, `tensor_buft_overrides` and `no_alloc`
of llama.cpp's model params unused. It builds its params in `__init__` and loads right after,
so `HuoziLlama` fills them the moment `__init__` assigns `model_params`: the only hook between
building and loading. What to fill comes in a `LoadHooks` given to the constructor, so the class
is defined once (this module imports llama_cpp: import it only when loading).

With RPC devices, every call that waits on the devices runs through `guard` (see `run_guarded`);
the engine reads `vocab`, `context` and `guard` here rather than `Llama`'s private fields.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import llama_cpp

from huozi_local.core.devices import ggml, rpc_guard
from huozi_local.core.errors import HuoziError, WorkerLost

Guard = Callable[..., Any]  # guard(function, *args) -> function(*args)


@dataclass(frozen=True)
class LoadHooks:
    """What the loader puts into llama.cpp's model params for one load."""

    progress_callback: Any  # a llama_cpp.llama_progress_callback, kept alive with the model
    device: ggml.ModelDeviceParams  # the C arrays the model points at
    no_alloc: bool = False
    rpc: bool = False


_ABANDONED: list[Any] = []
"""Models whose RPC worker died: never freed (freeing would wait on the dead worker forever)."""


class HuoziLlama(llama_cpp.Llama):  # type: ignore[misc]
    def __init__(self, model_path: str, *, hooks: LoadHooks, **kwargs: Any) -> None:
        self._hooks = hooks
        self._broken = ""
        self._closed = False
        self.guard: Guard | None = None
        """Runs a call that waits on the devices (None: call directly). Set for RPC devices."""
        super().__init__(model_path, **kwargs)
        if hooks.rpc:
            self.guard = self.run_guarded

    @property
    def model_params(self) -> Any:
        return self._huozi_model_params

    @model_params.setter
    def model_params(self, params: Any) -> None:
        params.progress_callback = self._hooks.progress_callback
        params.progress_callback_user_data = ctypes.c_void_p(0)
        self._hooks.device.apply(params)
        if self._hooks.no_alloc:  # with use_mmap=False: llama.cpp maps nothing in a dry run
            params.no_alloc = True
        self._huozi_model_params = params

    def replace_context(self, n_ctx: int) -> None:
        """Make the context again with room for `n_ctx` tokens (empty: the caller restores what
        it held). The old one, and its KV cache, is freed first, so the two never hold memory
        at once; should the new size fail to allocate, the old size is made again and the
        failure raised as HuoziError. With RPC devices it allocates there: guarded."""
        self._maybe_guarded(self._replace_context, n_ctx)

    def _replace_context(self, n_ctx: int) -> None:
        from llama_cpp import _internals

        old_n_ctx = int(self.context_params.n_ctx)
        current: Any = getattr(self, "_ctx")  # noqa: B009 - Llama's attribute is untyped here
        current.close()
        self.context_params.n_ctx = n_ctx
        try:
            made = _internals.LlamaContext(
                model=self._model, params=self.context_params, verbose=self.verbose
            )
        except ValueError:
            self.context_params.n_ctx = old_n_ctx
            self._ctx = self._stack.enter_context(
                contextlib.closing(
                    _internals.LlamaContext(
                        model=self._model, params=self.context_params, verbose=self.verbose
                    )
                )
            )
            raise HuoziError(f"llama.cpp could not make a context of {n_ctx} tokens") from None
        self._ctx = self._stack.enter_context(contextlib.closing(made))
        self._n_ctx = self.n_ctx()

    @property
    def vocab(self) -> Any:
        """The `llama_vocab *` of the model (token attributes, pieces, end-of-generation ids)."""
        return self._model.vocab

    @property
    def context(self) -> Any:
        """The `llama_context *` the engine decodes on."""
        return self.ctx

    def eval(self, tokens: Sequence[int]) -> None:
        self._maybe_guarded(super().eval, tokens)

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        return self._maybe_guarded(super().sample, *args, **kwargs)

    def _maybe_guarded(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        if self.guard is None:
            return call(*args, **kwargs)
        return self.guard(lambda: call(*args, **kwargs))

    def run_guarded(self, call: Any, *args: Any) -> Any:
        """Run a call that waits on RPC devices where a lost worker cannot hang the reply.

        Both evaluating and sampling synchronise with the devices; when a worker is lost ggml's
        RPC thread parks in the abort hook and the call never returns, so it runs in a helper
        thread (`rpc_guard.call_guarded`). Given up with the call still running (the worker
        lost, or Ctrl-C while it does not answer), the model is abandoned: never used again.
        """
        if self._broken:
            raise WorkerLost(self._broken)
        try:
            return rpc_guard.call_guarded(call, *args, on_left=self._abandon)
        except WorkerLost:
            raise WorkerLost(self._broken or rpc_guard.lost_message()) from None

    def _abandon(self) -> None:
        """Never free this model: freeing would wait on the worker forever."""
        why = rpc_guard.worker_lost()
        self._broken = (
            f"{rpc_guard.lost_message()}: this model cannot go on; "
            "restart huozi-local to use it again"
            if why is not None
            else "an RPC call was interrupted while the worker did not answer: this model "
            "cannot go on; restart huozi-local to use it again"
        )
        _ABANDONED.append(self)
        self._stack = ExitStack()
        for part in ("_model", "_ctx", "_batch"):
            inner = getattr(self, part, None)
            if inner is not None:
                _ABANDONED.append(inner)
                if hasattr(inner, "_exit_stack"):
                    inner._exit_stack = ExitStack()

    def close(self) -> None:
        """Free the model and its context. With RPC devices freeing goes through the workers'
        queue, behind whatever it waits on: guarded, so that a worker that does not answer
        leaves the model abandoned (WorkerLost) or Ctrl-C can leave it, instead of a hang."""
        stack = getattr(self, "_stack", None)
        if self._broken or self._closed or stack is None:
            return
        self._closed = True  # once: __del__ at exit must not start a thread to free nothing
        if self.guard is None:
            stack.close()
            return
        if sys.is_finalizing():  # no thread can start now; a worker frees what a client
            return  # leaves behind when its connection closes, so nothing needs freeing
        with contextlib.suppress(WorkerLost):  # abandoned: nothing more can be freed
            self.guard(stack.close)
