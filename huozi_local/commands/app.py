"""`huozi-local` with no command, and `huozi-local tui`: the chat app.

Only argparse at import time: Textual and llama_cpp load inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huozi_local.core.config import Paths, Settings
    from huozi_local.core.store.conversations import ConversationStore
    from huozi_local.tui.app import HuoziApp
    from huozi_local.tui.options import AppOptions

from huozi_local.commands._engine_load import (
    add_cpu_moe_option,
    add_rpc_option,
    check_cpu_moe,
    register_rpc_workers,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tui",
        help="open the chat app (the same as running huozi-local with no command)",
        description=(
            "Open the chat app. The first run sets up a model; later runs open the last model."
        ),
    )
    add_app_options(parser, top_level=False)
    parser.set_defaults(handler=run_app)


def add_app_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The app's options, on `tui` and on the bare command (`huozi-local --model FILE`,
    `huozi-local --cpu-moe 8`).

    On `tui` they default to SUPPRESS: argparse copies a subcommand's defaults over the
    top-level values, which would drop `huozi-local --model X tui`'s model otherwise.
    """
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--model",
        metavar="M",
        default=default,
        help="model to chat with in the app: huozi3, huozi3:q2_k, hf:..., or a .gguf path",
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        default=default,
        help="chat in the app with an OpenAI-compatible server instead of a local model",
    )
    parser.add_argument("--api-key", default=default, help="API key for --endpoint")
    add_cpu_moe_option(parser)
    add_rpc_option(parser)
    parser._option_string_actions["--cpu-moe"].default = default
    parser._option_string_actions["--rpc"].default = default


def run_app(args: argparse.Namespace) -> int:
    from huozi_local.core.config import Paths, Settings
    from huozi_local.core.store.conversations import ConversationStore

    paths = Paths.from_env()
    settings = Settings.load(paths.config_file)
    register_rpc_workers(args)  # before the app plans: their devices count as this machine's GPUs
    store = ConversationStore.open(paths.database_file)
    try:
        app = _build(args, paths, settings, store)
        app.run()
    finally:
        store.close()
    if store.notice:
        print(f"huozi-local: {store.notice}", file=sys.stderr)
    return 0


def _build(
    args: argparse.Namespace,
    paths: Paths,
    settings: Settings,
    store: ConversationStore,
    options: AppOptions | None = None,
) -> HuoziApp:
    """The app the command line asks for; `options` replaces probes (tests).

    `--model` and `--cpu-moe` are this run's overrides: the app opens with them and never saves
    them (choosing a model in setup or settings does)."""
    from huozi_local.core.loading.inputs import LoadOverrides
    from huozi_local.tui.app import create_app
    from huozi_local.tui.session import ModelInfo

    endpoint = getattr(args, "endpoint", None)
    model = getattr(args, "model", None)
    overrides = LoadOverrides(model=model, n_cpu_moe=check_cpu_moe(getattr(args, "cpu_moe", None)))
    if endpoint:
        from huozi_local.core.chat.remote_backend import RemoteBackend

        backend = RemoteBackend(endpoint, getattr(args, "api_key", None), model=model)
        backend.connect()  # refused / 401 / unknown model: one line now, not inside the app
        info = ModelInfo(backend.model_name, n_ctx=backend.n_ctx, location="remote")
        return create_app(
            settings=settings,
            paths=paths,
            store=store,
            backend=backend,
            model_info=info,
            options=options,
        )
    opened = None
    if model:
        from huozi_local.core.loading.model_file import open_model

        opened = open_model(model, paths)  # missing, not GGUF: one line before the app opens
    return create_app(
        settings=settings,
        paths=paths,
        store=store,
        options=options,
        overrides=overrides,
        model=opened,
    )
