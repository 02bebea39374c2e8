"""Runs a subcommand handler and turns user-facing failures into one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


def run_handler(handler: Handler, args: argparse.Namespace) -> int:
    from huozi_local.core.errors import HuoziError

    try:
        return handler(args)
    except HuoziError as exc:
        print(f"huozi-local: {exc}", file=sys.stderr)
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
