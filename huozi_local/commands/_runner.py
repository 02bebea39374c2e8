"""Runs a subcommand handler and turns user-facing failures into one line and exit status 2."""

from __future__ import annotations

import argparse
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
        return 0
    except OSError as exc:
        # The safety net for I/O the core did not anticipate: still one line, never a traceback.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"huozi-local: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
