"""`huozi-local worker`: lend this machine's GPU (or CPU) to huozi-local on another machine.

The worker is llama.cpp's RPC server (`ggml_backend_rpc_start_server`): the other machine runs
`chat --rpc HOST:PORT` and sees this machine's device as one of its own GPUs. The protocol has no
authentication and no encryption, so the worker listens on loopback unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="serve this machine's GPU to huozi-local elsewhere (llama.cpp RPC)",
        description=(
            "Serve this machine's devices over llama.cpp's RPC protocol; on the other machine "
            "run e.g. `huozi-local chat --rpc THIS_HOST:50052`. Both need the same huozi-local "
            "version and llama-cpp-python built with RPC (see README). One client at a time."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50052, help="port (default 50052)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    parser.add_argument(
        "--cache",
        metavar="DIR",
        type=Path,
        help="keep the large tensors clients send in DIR: the next load of the same model sends "
        "their hashes instead of gigabytes over the network",
    )
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    import socket
    import threading

    from huozi_local.core.devices import ggml
    from huozi_local.core.devices.endpoints import Endpoint, is_loopback_host
    from huozi_local.core.errors import HuoziError

    if not 0 < args.port < 65536:
        raise HuoziError(f"--port must be between 1 and 65535, not {args.port}")
    if args.threads is not None and args.threads < 1:
        raise HuoziError(f"--threads must be at least 1, not {args.threads}")
    endpoint = Endpoint(args.host, args.port)
    try:  # a busy port or a foreign address fails here, in one line, before ggml's loop
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        raise HuoziError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from None
    if not ggml.supports_rpc():
        raise HuoziError(
            "this llama-cpp-python was built without RPC support: reinstall it with "
            'CMAKE_ARGS="-DGGML_RPC=on" (see the README)'
        )
    if not is_loopback_host(args.host):
        print(
            f"huozi-local: warning: listening on {args.host}: llama.cpp's RPC has no password "
            "and no encryption; anyone who can reach this port can use this machine's memory "
            "and run code on its device. Use it only on a network you trust.",
            file=sys.stderr,
        )
    threads = args.threads or _physical_cores()
    cache = args.cache.expanduser().resolve() if args.cache is not None else None
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HuoziError(
                f"cannot use {cache} as the tensor cache: {exc.strerror or exc}"
            ) from None
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            ggml.start_rpc_server(endpoint, n_threads=threads, cache_dir=cache)
        except BaseException as exc:
            failure.append(exc)

    print(f"huozi-local: worker serving at {endpoint} (Ctrl-C to stop)", file=sys.stderr)
    sys.stderr.flush()
    server = threading.Thread(target=serve, name="huozi-rpc-worker", daemon=True)
    server.start()
    try:
        while server.is_alive():
            server.join(0.5)
    except KeyboardInterrupt:
        print("huozi-local: worker stopped", file=sys.stderr)
        return 0
    if failure:
        raise failure[0]
    return 0


def _physical_cores() -> int:
    from huozi_local.core.planning.probes import probe_cpu

    try:
        return max(1, probe_cpu()[1])
    except Exception:
        import os

        return max(1, (os.cpu_count() or 2) // 2)
