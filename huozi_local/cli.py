"""The `huozi-local` command: argument parsing and dispatch only.

Each subcommand lives in `huozi_local.commands.<name>` and exposes `register(subparsers)`. Those
modules import only argparse at the top; the heavy libraries (llama_cpp, textual, huggingface_hub)
are imported inside the handlers, so `huozi-local --help` starts in a blink.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from huozi_local import __version__

# Order is the order shown in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "app",
    "chat",
    "ask",
    "download",
    "import_model",
    "models",
    "doctor",
    "plan",
    "inspect",
    "repair",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="huozi-local",
        description=(
            "Run the huozi 3.0 chat model (HIT-SCIR, Mixtral-8x7B MoE) on this machine, offline. "
            "With no command, opens the chat app."
        ),
    )
    parser.add_argument("--version", action="version", version=f"huozi-local {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"huozi_local.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        handler = _default_handler()
    from huozi_local.commands._runner import run_handler

    return run_handler(handler, args)


def _default_handler() -> Callable[[argparse.Namespace], int]:
    """No subcommand: the chat app (its module imports only argparse until it runs)."""
    from huozi_local.commands.app import run_app

    return run_app


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
