"""What a lost RPC worker does to this process: one line, never an abort, a backtrace or a hang.

llama.cpp's RPC client treats every failed exchange with a worker as fatal: GGML_ABORT, which
prints a gdb backtrace and calls abort(). ggml lets a program replace the printing
(`ggml_set_abort_callback`), not the abort, so the hook installed here never returns:
- when a thread of ours is waiting on the call that failed (`call_guarded`), the failing thread
  (ggml's RPC thread, or the helper that made the call) is parked for good and the waiter raises
  `WorkerLost`: the chat ends the reply and goes on; the model is never used or freed again;
- otherwise nobody could be told (an unguarded C call waits on that thread forever): the hook
  writes one line and ends the process with status 2.

Every call that talks to a worker (registration, the load, decoding, sampling, the KV state)
runs through `call_guarded`, in a helper thread, so that the caller only ever waits in Python:
there the loss is seen, and there Ctrl-C lands.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from huozi_local.core.devices import rpc_relay
from huozi_local.core.errors import WorkerLost

T = TypeVar("T")
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
POLL_S = 0.05

_lost = threading.Event()
_reasons: list[str] = []
_state = threading.Lock()
_waiting = 0  # guarded calls a caller is waiting on now
_given_up = False  # a caller stopped waiting on a call that still runs
_handler: Any = None
_stderr = 2  # a copy of fd 2 made before any load (a quiet load points fd 2 at /dev/null)


def on_ggml_abort(
    set_abort_callback: Callable[[int | None], object], handler: Callable[[str], None]
) -> None:
    """Call `handler(message)` in place of ggml's default when llama.cpp aborts.

    `set_abort_callback` is ggml's `ggml_set_abort_callback` (given by `ggml`, which this
    module must not import: ggml imports it). ggml still calls abort() once the handler
    returns; a handler that never returns keeps the process alive.
    """
    global _handler

    def call(message: bytes | None) -> None:
        handler((message or b"").decode(errors="replace"))

    _handler = ABORT_CALLBACK(call)
    set_abort_callback(ctypes.cast(_handler, ctypes.c_void_p).value)


def watch_rpc_workers(set_abort_callback: Callable[[int | None], object]) -> None:
    """Install the hook (once per process), before the first connection to a worker."""
    global _stderr
    if _handler is None:
        _stderr = os.dup(2)
        on_ggml_abort(set_abort_callback, _on_abort)


def _on_abort(message: str) -> None:
    if "RPC" not in message and "connect" not in message:
        print(message, file=sys.stderr)
        return  # not a worker: ggml aborts as it always did
    reason = rpc_relay.last_failure() or message.rsplit(": ", 1)[-1].strip()
    with _state:
        _reasons.append(reason)
        _lost.set()
        someone_waits = _waiting > 0 or _given_up
    if not someone_waits:
        # os.write and os._exit: no Python lock this thread might wait on (stdout's may be
        # held by a thread blocked in C), no finalizer that would talk to the worker again.
        os.write(_stderr, f"huozi-local: {lost_message()}\n".encode(errors="replace"))
        os._exit(2)
    threading.Event().wait()  # park this thread for good; abort() never runs


def worker_lost() -> str | None:
    """Why an RPC worker was lost in this process, or None while none was."""
    if not _lost.is_set():
        return None
    return _reasons[0] if _reasons else "connection lost"


def lost_message() -> str:
    return f"the RPC worker went away ({worker_lost() or 'connection lost'})"


def call_guarded(
    call: Callable[..., T],
    *args: Any,
    on_left: Callable[[], None] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> T:
    """`call(*args)` in a helper thread, waited on here: WorkerLost when a worker is lost.

    When the wait is given up with the call still running (a lost worker, or Ctrl-C), the
    call is left behind and `on_left()` runs: whatever the call was using must never be used
    or freed again. Ctrl-C gives up at once, unless `on_interrupt` is given: then the first
    Ctrl-C calls it (to stop the call at its next check) and the wait goes on; a second one
    gives up.
    """
    global _waiting, _given_up
    if sys.is_finalizing():  # no thread starts at exit (Thread.start would wait forever)
        return call(*args)
    outcome: list[T] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(call(*args))
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    def give_up() -> None:
        global _given_up
        with _state:
            _given_up = True
        if on_left is not None:
            on_left()

    with _state:
        _waiting += 1
    try:
        threading.Thread(target=run, name="huozi-rpc-call", daemon=True).start()
        interrupted = False
        # an Event, not Thread.join: Ctrl-C inside join() can leave the thread looking finished
        while True:
            try:
                if done.wait(POLL_S):
                    break
                if _lost.is_set():
                    give_up()
                    raise WorkerLost(lost_message())
            except KeyboardInterrupt:
                if done.is_set():
                    raise
                if on_interrupt is not None and not interrupted:
                    interrupted = True
                    on_interrupt()
                    continue
                give_up()
                raise
    finally:
        with _state:
            _waiting -= 1
    if failure:
        raise failure[0]
    return outcome[0]
