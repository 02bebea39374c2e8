"""`huozi-local chat`: an interactive chat in the terminal (the TUI's plain-terminal sibling)."""

from __future__ import annotations

import argparse

from huozi_local.commands._engine_load import add_model_options


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with the model in this terminal",
        description=(
            "Chat in the terminal with streamed replies. Commands: /new (start over), "
            "/system TEXT (set the system prompt), /regen (answer the last message again), "
            "/save [FILE|FOLDER/] (write the conversation as JSON, readable by `ask --messages`; "
            "into a folder, or with no FILE, as huozi-chat-YYYYmmdd-HHMMSS.json), "
            "/quit. Ctrl-C stops a reply; Ctrl-D or /quit leaves. With piped input, each line "
            "is one user message."
        ),
    )
    add_model_options(parser)
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="chat with an OpenAI-compatible server (huozi-local serve, vLLM, llama-server) "
        "instead of a local model; --model then picks the server's model",
    )
    parser.add_argument("--api-key", help="API key for --endpoint")
    parser.add_argument(
        "--json", action="store_true", help="print each reply as one JSON line (ask --json fields)"
    )
    parser.set_defaults(handler=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    from huozi_local.commands._chat_repl import ChatRepl

    return ChatRepl.start(args).run()
