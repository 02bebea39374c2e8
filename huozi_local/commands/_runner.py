"""Runs a subcommand handler and turns user-facing failures into one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")


def run_handler(handler: Handler, args: argparse.Namespace) -> int:
    from huozi_local.commands._remedies import cli_wording
    from huozi_local.core.control_text import visible
    from huozi_local.core.errors import HuoziError

    try:
        return handler(args)
    except HuoziError as exc:
        # A message may quote a file's name or header: one line, control characters escaped.
        print(f"huozi-local: {visible(cli_wording(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("huozi-local: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`| head`): end quietly. Point stdout at /dev/null so the flush at
        # interpreter exit does not fail a second time with "Exception ignored ... BrokenPipe".
        _silence_stdout()
        return 0
    except UnicodeEncodeError as exc:
        encoding = getattr(sys.stdout, "encoding", None) or exc.encoding
        print(
            f"huozi-local: the output encoding ({encoding}) cannot write this text: "
            "set PYTHONIOENCODING=utf-8 or use a UTF-8 locale",
            file=sys.stderr,
        )
        return 2
    except UnicodeDecodeError as exc:
        print(f"huozi-local: input is not valid UTF-8 text ({exc.reason})", file=sys.stderr)
        return 2
    except OSError as exc:
        # The safety net for I/O the core did not anticipate: still one line, never a traceback.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"huozi-local: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured output): nothing to flush
        pass


def run_cancelable(work: Callable[[threading.Event], T], what: str) -> T:
    """Run long core work (a download, an import) in a thread so that Ctrl-C sets its cancel event.

    Interrupting the work itself could stop it between a write and the rename that marks a file
    finished; the cancel event lets the core stop at its next check and leave every finished file
    intact and every partial one resumable; the core raises Cancelled when it stopped.
    """
    cancel = threading.Event()
    finished = threading.Event()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work(cancel)
        except BaseException as exc:  # handed to the main thread, which reports it
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=target, name=f"huozi-{what}", daemon=True)
    worker.start()
    # An Event, not Thread.join: a Ctrl-C that lands inside join() can make CPython (3.11,
    # gh-90882) consider the thread finished while it still runs; the process then exited with
    # the work cut off before its cleanup (a repair's `.partial` was left behind).
    while True:
        try:
            while not finished.wait(0.2):
                pass
            break
        except KeyboardInterrupt:
            cancel.set()  # and keep waiting: the core stops at its next check, cleaned up
    error = outcome.get("error")
    if error is not None:
        raise error
    # A Ctrl-C after the work's last cancel check did not stop it: it finished (an import may
    # have moved the user's file), so report what happened rather than "cancelled, unchanged".
    result: T = outcome["result"]
    return result
