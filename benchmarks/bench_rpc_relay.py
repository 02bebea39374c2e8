"""What the RPC deadlines cost: huozi-local's relays against llama.cpp's RPC client and server
talking straight to each other.

`--rpc` passes ggml's traffic through a relay in the client process (`rpc_relay`: deadlines on
every exchange), and `huozi-local worker` puts a front before llama.cpp's server (`worker_front`:
an idle client gives way). Both copy every byte in Python. This loads a real-shape huozi3 slice
(official dimensions, --layers layers, q4_0) with every layer on the worker's device, then
measures, each in a fresh process, alternating, best of --rounds:
- load: the seconds to load the model (every weight crosses the wire);
- prompt: tokens/s evaluating a prompt of ~1,500 tokens (one big GRAPH_COMPUTE per batch);
- decode: tokens/s generating --tokens tokens (a round trip per token: the latency cost).
ours = `huozi-local worker` + the client relay; baseline = llama.cpp's own server
(`ggml_backend_rpc_start_server`, what `rpc-server` runs) with ggml connected to it directly.
The worker serves this machine's CPU on 127.0.0.1, so the wire is as fast as it gets: the
relays' share of the time is at its largest here (a real network adds its own latency to both).

Run: python benchmarks/bench_rpc_relay.py [--layers 2] [--tokens 48] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf  # noqa: E402
from huozi_local.testing.rpc_worker import RpcWorker, free_port  # noqa: E402

THREADS = 1  # the worker's; the client computes nothing (every layer is on the worker)


def measure(model: Path, endpoint: str, direct: bool, tokens: int) -> dict[str, float]:
    """In a child process: load over RPC, evaluate a prompt, generate; `direct`: no relay."""
    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.chat.loader import LoadOptions
    from huozi_local.core.chat.types import SamplingOptions, collect_reply
    from huozi_local.core.devices import rpc_relay

    if direct:

        class Straight:
            def __init__(self, worker: Any) -> None:
                self.endpoint = worker

        rpc_relay.relay_for = lambda worker: Straight(worker)  # type: ignore[assignment,return-value]
    started = time.perf_counter()
    engine = LlamaEngine.load(
        model,
        LoadOptions(n_ctx=2048, n_gpu_layers=-1, n_threads=THREADS, rpc_servers=(endpoint,)),
    )
    load_s = time.perf_counter() - started
    text = "".join(f"第{i}段话，" for i in range(300))
    engine.clear_cache()
    one = SamplingOptions(max_tokens=1, temperature=0.0, seed=1)
    first = collect_reply(engine.stream_completion(text, one))
    engine.clear_cache()
    many = SamplingOptions(max_tokens=tokens, temperature=0.0, seed=1)
    reply = collect_reply(engine.stream_completion("你好", many))
    engine.close()
    return {
        "load_s": load_s,
        "prompt_tokens": first.prompt_tokens,
        "prompt_tps": first.prompt_tokens / first.ttft_s,
        "decode_tokens": reply.completion_tokens,
        "decode_tps": reply.tokens_per_s,
    }


def start_llama_server(port: int) -> subprocess.Popen[bytes]:
    """llama.cpp's RPC server alone, as `rpc-server` runs it: no front."""
    code = (
        "from huozi_local.core.devices import ggml; "
        "from huozi_local.core.devices.endpoints import Endpoint; "
        f"ggml.start_rpc_server(Endpoint('127.0.0.1', {port}), n_threads={THREADS}, "
        "cache_dir=None)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_listening(port: int) -> None:
    from huozi_local.core.devices.endpoints import Endpoint, probe_worker
    from huozi_local.core.errors import HuoziError

    for _ in range(600):
        try:
            probe_worker(Endpoint("127.0.0.1", port), timeout=5.0)
            return
        except HuoziError:
            time.sleep(0.1)
    raise SystemExit("llama.cpp's RPC server did not start")


def run_child(model: Path, endpoint: str, direct: bool, tokens: int) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(model), endpoint, str(int(direct)), str(tokens)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        path, endpoint, direct, tokens = sys.argv[2:6]
        print(json.dumps(measure(Path(path), endpoint, direct == "1", int(tokens))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ours: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(
            write_real_shape_gguf(Path(tmp) / "slice.gguf", RealShape(n_layers=args.layers))
        )
        for _ in range(args.rounds):
            with RpcWorker(threads=THREADS) as worker:
                ours.append(run_child(model, str(worker.endpoint), False, args.tokens))
            port = free_port()
            server = start_llama_server(port)
            try:
                wait_listening(port)
                base.append(run_child(model, f"127.0.0.1:{port}", True, args.tokens))
            finally:
                server.kill()
                server.wait()
    print(
        f"huozi3 real-shape slice, {args.layers} layers, q4_0, every layer on RPC0 (a worker "
        f"serving this CPU on 127.0.0.1, {THREADS} thread); best of {args.rounds}"
    )
    print(f"{'measurement':<28} {'ours':>10} {'llama.cpp direct':>17} {'ours/direct':>12}")
    rows = (
        ("load (s, lower is better)", "load_s", min),
        (f"prompt {int(ours[0]['prompt_tokens'])} tok (tok/s)", "prompt_tps", max),
        (f"decode {int(ours[0]['decode_tokens'])} tok (tok/s)", "decode_tps", max),
    )
    for label, key, best in rows:
        a = best(r[key] for r in ours)
        b = best(r[key] for r in base)
        print(f"{label:<28} {a:>10.2f} {b:>17.2f} {a / b:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
