"""`huozi-local worker`: lend this machine's GPU (or CPU) to huozi-local on another machine.

The worker is llama.cpp's RPC server (`ggml_backend_rpc_start_server`): the other machine runs
`chat --rpc HOST:PORT` and sees this machine's device as one of its own GPUs. The protocol has no
authentication and no encryption, so the worker listens on loopback unless told otherwise.

The server itself listens on a private loopback port; the address the user gives is held by
`worker_front`, which passes one client through at a time and hangs up on an idle one when
another is waiting (llama.cpp's server would serve an idle connection forever).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    from huozi_local.core.devices.endpoints import Endpoint

DEFAULT_IDLE_TIMEOUT_S = 60.0


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
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: physical cores; at most 512)"
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        type=Path,
        help="keep the large tensors clients send in DIR: the next load of the same model sends "
        "their hashes instead of gigabytes over the network",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="SECONDS",
        help="hang up on a client that has been idle this long while another client waits "
        f"(default {DEFAULT_IDLE_TIMEOUT_S:g}; 0: never)",
    )
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    import math
    import socket
    import threading

    from huozi_local.core.devices import ggml
    from huozi_local.core.devices.endpoints import Endpoint, is_loopback_host
    from huozi_local.core.devices.threadpool import GGML_MAX_N_THREADS
    from huozi_local.core.devices.worker_front import WorkerFront
    from huozi_local.core.errors import HuoziError

    if not 0 < args.port < 65536:
        raise HuoziError(f"--port must be between 1 and 65535, not {args.port}")
    # llama.cpp takes the count unchecked: 100000000 threads served until the first client's
    # graph, then aborted with std::bad_alloc. ggml's own ceiling (GGML_MAX_N_THREADS, the size
    # of its CPU masks) is the bound, not this machine's cores: a worker may be told to use more
    # threads than cores on purpose, and ggml cannot pin more than 512 anyway.
    if args.threads is not None and not 1 <= args.threads <= GGML_MAX_N_THREADS:
        most = GGML_MAX_N_THREADS
        raise HuoziError(
            f"--threads must be between 1 and {most} (ggml's most), not {args.threads}"
        )
    if not (math.isfinite(args.idle_timeout) and args.idle_timeout >= 0):
        raise HuoziError(f"--idle-timeout must be 0 or more seconds, not {args.idle_timeout}")
    endpoint = Endpoint(args.host, args.port)
    try:  # a busy port or a foreign address fails here, in one line, before ggml's loop
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listener = socket.create_server((args.host, args.port), family=family, backlog=16)
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
    backend = Endpoint("127.0.0.1", _free_loopback_port())
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            ggml.start_rpc_server(backend, n_threads=threads, cache_dir=cache)
        except BaseException as exc:
            failure.append(exc)

    server = threading.Thread(target=serve, name="huozi-rpc-worker", daemon=True)
    server.start()
    try:
        _wait_until_serving(backend, server)
        if failure:
            raise failure[0]

        def shed(idle: float) -> None:
            print(
                f"huozi-local: hung up on a client idle for {idle:.0f} s: another was waiting",
                file=sys.stderr,
                flush=True,
            )

        front = WorkerFront(listener, backend, args.idle_timeout, on_shed=shed)
        threading.Thread(target=front.serve_forever, name="huozi-worker-front", daemon=True).start()
        print(f"huozi-local: worker serving at {endpoint} (Ctrl-C to stop)", file=sys.stderr)
        sys.stderr.flush()
        while server.is_alive():
            server.join(0.5)
    except KeyboardInterrupt:
        print("huozi-local: worker stopped", file=sys.stderr)
        return 0
    if failure:
        raise failure[0]
    return 0


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(backend: Endpoint, server: threading.Thread) -> None:
    """Until llama.cpp's server answers a HELLO on its private port (or has given up)."""
    import time

    from huozi_local.core.devices.endpoints import probe_worker
    from huozi_local.core.errors import HuoziError

    while server.is_alive():
        try:
            probe_worker(backend, timeout=5.0)
            return
        except HuoziError:
            time.sleep(0.05)


def _physical_cores() -> int:
    from huozi_local.core.planning.probes import probe_cpu

    try:
        return max(1, probe_cpu()[1])
    except Exception:
        import os

        return max(1, (os.cpu_count() or 2) // 2)
