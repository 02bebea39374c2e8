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
from typing import NoReturn

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
    "cache",
    "serve",
    "worker",
)


class OneLineParser(argparse.ArgumentParser):
    """Bad input gets one line and exit status 2, not argparse's usage block plus an error.

    An unknown first word (`huozi-local FILE.gguf`, a typo) names the commands there are.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"huozi-local: {_explain(self, message)}\n")


def _explain(parser: argparse.ArgumentParser, message: str) -> str:
    if "invalid choice" not in message or parser.prog != "huozi-local":
        where = parser.prog.removeprefix("huozi-local").strip()
        hint = f" (see `huozi-local {where} --help`)" if where else " (see `huozi-local --help`)"
        return message + hint
    word = message.split("'")[1] if message.count("'") >= 2 else message
    commands = ", ".join(_command_names(parser))
    text = f"unknown command '{word}' (commands: {commands})"
    if word.endswith(".gguf") or "/" in word:
        text += f"; to chat with a file: huozi-local --model {word}, or huozi-local import {word}"
    return text


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def build_parser() -> argparse.ArgumentParser:
    from huozi_local.commands.app import add_app_options

    parser = OneLineParser(
        prog="huozi-local",
        description=(
            "Run the huozi 3.0 chat model (HIT-SCIR, Mixtral-8x7B MoE) on this machine, offline. "
            "With no command, opens the chat app (the app's options below apply to it)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"huozi-local {__version__}")
    add_app_options(parser, top_level=True)
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
