"""`huozi-local serve`: the loaded model behind an OpenAI-compatible HTTP API.

Loading (planner, --ctx, --gpu-layers, progress) and the sampling defaults (--temp, --max-tokens,
--seed, --system over the settings) are the same as `chat` and `ask` use, through
`commands/_engine_load.py`: a request that leaves a field out gets what the terminal chat would use.
"""

from __future__ import annotations

import argparse
import sys

from huozi_local.commands._engine_load import add_model_options

EXTRA_HINT = (
    "the server needs starlette and uvicorn: pipx inject huozi-local starlette uvicorn "
    "(or pip install 'huozi-local[server]')"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API",
        description=(
            "Serve the model at /v1/chat/completions, /v1/completions and /v1/models for the "
            "openai client, editors and chat UIs (roles system/user/assistant or 系统/用户/助手; "
            "stop_token_ids and repetition_penalty accepted). Requests queue one at a time on "
            "the model. Sampling options set the defaults of requests that leave them out."
        ),
    )
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request")
    parser.add_argument("--model-id", help="the id /v1/models reports (default: the model's name)")
    parser.add_argument(
        "--cors",
        metavar="ORIGIN",
        action="append",
        default=[],
        help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API from a browser "
        "(repeatable; default: no CORS headers, so no web page can read the answers)",
    )
    parser.set_defaults(handler=run_serve)


def check_api_key(key: str | None) -> None:
    """Refuse a key no client can present: HTTP header values are ASCII (latin-1 at most, which
    no client library sends as the UTF-8 bytes a terminal types), and the server strips the
    token's surrounding spaces. Such a key was accepted and then every request got 401; an
    empty one turned the key check off while the user believed it on."""
    from huozi_local.core.errors import HuoziError

    if key is None:
        return
    if not key or not (key.isascii() and key.isprintable()) or key != key.strip():
        raise HuoziError(
            "--api-key must be printable ASCII characters with no space at either end: "
            "clients send it in an HTTP header, which cannot carry anything else"
        )


def run_serve(args: argparse.Namespace) -> int:
    from huozi_local.core.errors import HuoziError

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise HuoziError(EXTRA_HINT) from exc

    from huozi_local.server.runner import sigterm_as_ctrl_c

    check_api_key(args.api_key)
    with sigterm_as_ctrl_c():
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from huozi_local.commands._engine_load import load_engine, sampling_from, system_prompt_from
    from huozi_local.server.app import ServedModel, create_app
    from huozi_local.server.runner import base_url, bind_socket, is_loopback, make_server
    from huozi_local.server.serving import raw_completer

    sock = bind_socket(args.host, args.port)  # before the slow load: a busy port fails at once
    try:
        loaded, settings = load_engine(args)
        engine = loaded.engine
        defaults = sampling_from(args, settings)
        model_id = args.model_id or loaded.model.display_name
        served = ServedModel(
            engine, model_id, raw_completer(engine), system_prompt_from(args, settings)
        )
        app = create_app(
            served,
            api_key=args.api_key,
            defaults=defaults,
            on_shutdown=engine.close,
            bind_host=args.host,
            cors_origins=args.cors,
        )
        server = make_server(app)
        if not is_loopback(args.host) and not args.api_key:
            print(
                f"huozi-local: warning: listening on {args.host} without --api-key: "
                "anyone who can reach this machine can use the model",
                file=sys.stderr,
            )
        print(
            f"huozi-local: serving {model_id} at {base_url(sock)} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the Ctrl-C (or SIGTERM) it handled, after a clean shutdown
        print("huozi-local: server stopped, model released", file=sys.stderr)
    finally:
        sock.close()
    return 0
