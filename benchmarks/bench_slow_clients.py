"""Slow-client attack on the server: /health while N connections each hold half a request.

The server runs in its own process, as `huozi-local serve` runs it (tiny model, rig 'chat'),
with its fd limit set to --fd-limit (default 256, macOS's `ulimit -n`); N (default 600) is
above it. An attacker process opens N connections, sends each a partial request head and
trickles a byte on each every second; attack 'hold' keeps what it has, attack 'reopen' opens a
new connection for each one the server closes (the worst case for shedding: the listen queue
stays full of attackers). /health is then asked --probes times, one at a time, each given
--probe-timeout seconds; a failed probe counts its time too.

Reported per server config, as ratios to the same server with no attack in the same run: /health
success rate and p50/p99 latency; and how much the server wrote to stderr during the attack.
Two configs: 'guarded' (this branch's runner: read deadlines, the connection cap, rate-limited
logs) and 'unguarded' (uvicorn as main ran it before: defaults, no guard), rebuilt here from
the same app so the two differ only in the runner.

    HUOZI_TINY_MODELS_DIR=/tmp/tiny python benchmarks/bench_slow_clients.py
        [--fd-limit 256] [--connections 600] [--probes 20] [--configs guarded,unguarded]
        [--attacks hold,reopen]
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from huozi_local.testing.tiny_model import TinyModels

PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def serve_child(config: str, model: Path, fd_limit: int) -> int:
    resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
    import uvicorn

    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.chat.loader import LoadOptions
    from huozi_local.server.app import ServedModel, create_app
    from huozi_local.server.runner import base_url, bind_socket, make_server

    engine = LlamaEngine.load(model, LoadOptions(n_ctx=512, n_threads=1, seed=1))
    app = create_app(ServedModel(engine, "huozi3-tiny"), on_shutdown=engine.close)
    sock = bind_socket("127.0.0.1", 0)
    if config == "guarded":
        server = make_server(app, log_level="warning")
    else:  # main's runner before this change: uvicorn's defaults
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5, lifespan="on")
        )
    print(f"serving at {base_url(sock)}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0


def attack_child(port: int, connections: int, reopen: bool) -> int:
    """Hold `connections` half-sent requests until stdin closes; print how many the server
    closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, connections + 64)), hard))
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    closed_by_server = 0

    def open_one() -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(PARTIAL_HEAD)
        except OSError:
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, None)

    for _ in range(connections):
        open_one()
    print("holding", flush=True)
    last_trickle = time.monotonic()
    while True:
        for key, _events in selector.select(timeout=0.2):
            if key.fileobj is sys.stdin:
                print(closed_by_server, flush=True)
                return 0
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                closed = sock.recv(4096) == b""
            except (BlockingIOError, InterruptedError):
                closed = False
            except OSError:
                closed = True
            if closed:
                selector.unregister(sock)
                sock.close()
                closed_by_server += 1
                if reopen:
                    open_one()
        if time.monotonic() - last_trickle >= 1.0:
            last_trickle = time.monotonic()
            for key in list(selector.get_map().values()):
                if isinstance(key.fileobj, socket.socket):
                    try:
                        key.fileobj.send(b"x")
                    except OSError:
                        pass


class Probes(NamedTuple):
    ok: int
    total: int
    latencies: list[float]

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probe(port: int, count: int, timeout: float) -> Probes:
    latencies: list[float] = []
    ok = 0
    for _ in range(count):
        start = time.perf_counter()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            connection.close()
        except OSError:
            latencies.append(time.perf_counter() - start)
            continue
        latencies.append(time.perf_counter() - start)
        ok += response.status == 200
    return Probes(ok, count, latencies)


def run_config(config: str, attack: str, model: Path, args: argparse.Namespace) -> None:
    log = tempfile.TemporaryFile()
    command = [sys.executable, __file__, "--serve-child", config, str(model), str(args.fd_limit)]
    server = subprocess.Popen(command, stderr=log)
    try:
        port = _wait_for_port(log, server)
        calm = probe(port, args.probes, args.probe_timeout)
        attacker = subprocess.Popen(
            [sys.executable, __file__, "--attack-child", str(port), str(args.connections), attack],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert attacker.stdin is not None and attacker.stdout is not None
        attacker.stdout.readline()  # "holding": every connection opened once
        log_before = log.seek(0, os.SEEK_END)
        attacked = probe(port, args.probes, args.probe_timeout)
        log_after = log.seek(0, os.SEEK_END)
        attacker.stdin.close()
        closed = attacker.stdout.readline().strip()
        attacker.wait(30)
        log.seek(log_before)
        lines = log.read(log_after - log_before).count(b"\n")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    p50 = attacked.quantile(0.5) / calm.quantile(0.5)
    p99 = attacked.quantile(0.99) / calm.quantile(0.99)
    print(
        f"{config} server, fd limit {args.fd_limit}; attack '{attack}': {args.connections} "
        f"slow connections, {closed} closed by the server meanwhile\n"
        f"  /health answered: {calm.ok}/{calm.total} without attack, "
        f"{attacked.ok}/{attacked.total} under attack "
        f"(success ratio {attacked.ok / attacked.total / max(calm.ok / calm.total, 1e-9):.2f})\n"
        f"  latency p50 {calm.quantile(0.5) * 1000:.1f} ms -> {attacked.quantile(0.5) * 1000:.1f}"
        f" ms (x{p50:.1f}), p99 {calm.quantile(0.99) * 1000:.1f} ms -> "
        f"{attacked.quantile(0.99) * 1000:.1f} ms (x{p99:.1f})\n"
        f"  server stderr during the attack: {lines} lines, {log_after - log_before} bytes"
    )


def _wait_for_port(log: object, server: subprocess.Popen[bytes]) -> int:
    assert hasattr(log, "seek") and hasattr(log, "read")
    for _ in range(1200):
        log.seek(0)
        text = log.read().decode(errors="replace")
        if " at http" in text:
            return int(text.split(" at http://127.0.0.1:")[1].split("/")[0])
        if server.poll() is not None:
            raise SystemExit(f"the server did not start:\n{text}")
        time.sleep(0.1)
    raise SystemExit("the server did not start in 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd-limit", type=int, default=256)
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--probe-timeout", type=float, default=2.0)
    parser.add_argument("--configs", default="guarded,unguarded")
    parser.add_argument("--attacks", default="hold,reopen")
    parser.add_argument("--serve-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--attack-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        config, path, limit = args.serve_child
        return serve_child(config, Path(path), int(limit))
    if args.attack_child:
        port, count, attack = args.attack_child
        return attack_child(int(port), int(count), attack == "reopen")
    root = os.environ.get("HUOZI_TINY_MODELS_DIR") or tempfile.mkdtemp(prefix="tiny-models-")
    model = TinyModels(Path(root)).get("merged", "q4_0", rig="chat")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    for config in args.configs.split(","):
        for attack in args.attacks.split(","):
            run_config(config, attack, model, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
