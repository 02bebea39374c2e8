"""The planner's device estimate / llama.cpp's allocation on an RPC device, over placements.

A `huozi-local worker` on 127.0.0.1 serves this machine's CPU; llama.cpp sees it as a GPU-typed
device (RPC0) and places layers, experts, KV cache and compute buffers on it as on a graphics
card. For each placement (n_gpu_layers x n_cpu_moe x n_ctx x flash attention) a real-shape huozi3
slice (official dimensions, --layers layers, q4_0, a sparse file) is loaded for real, and the
bytes llama.cpp allocates on RPC0 (model + KV + compute, from its own log) are the baseline.
Printed per placement:
- estimate / allocation: `memory_model.device_breakdown`, the planner's analytical figure
  (what-if plans and the first choice of a placement use it); goal within +-3%;
- fit / allocation: the measured fit (the planner's weights and KV plus the compute buffers of
  llama.cpp's own no_alloc dry run), which runs before every local GPU load.

Run: python benchmarks/bench_rpc_allocation.py [--layers 2] [--ctx 2048,8192] [--flash 1,0]
Memory: the worker holds what the placement puts on RPC0 (up to the whole slice, ~1.9 GB at 2
layers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf  # noqa: E402
from huozi_local.testing.rpc_allocation import PlacementCase  # noqa: E402
from huozi_local.testing.rpc_worker import RpcWorker  # noqa: E402

MiB = 1024**2


def placements(layers: int, contexts: list[int], flashes: list[bool]) -> list[PlacementCase]:
    """Every n_gpu_layers (the output alone .. everything) with each n_cpu_moe that changes
    what the device holds (0, then experts of 1 .. all of its layers back in RAM)."""
    cases = []
    for ctx in contexts:
        for flash in flashes:
            for ngl in range(1, layers + 2):
                on_gpu = ngl - 1  # repeating layers on the device: the last `on_gpu`
                moes = [0, *range(layers - on_gpu + 1, layers + 1)] if on_gpu else [0]
                cases += [PlacementCase(ngl, moe, ctx, flash) for moe in moes]
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ctx", default="2048,8192")
    parser.add_argument("--flash", default="1,0", help="flash attention on (1) / off (0)")
    args = parser.parse_args()
    contexts = [int(c) for c in args.ctx.split(",")]
    flashes = [bool(int(f)) for f in args.flash.split(",")]
    cases = placements(args.layers, contexts, flashes)
    with tempfile.TemporaryDirectory() as tmp, RpcWorker() as worker:
        model = write_real_shape_gguf(Path(tmp) / "slice.gguf", RealShape(n_layers=args.layers))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        done = subprocess.run(
            [sys.executable, "-m", "huozi_local.testing.rpc_allocation", "--model", str(model),
             "--rpc", str(worker.endpoint), "--placements", ",".join(map(str, cases))],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    print(
        f"huozi3 real-shape slice, {args.layers} layers, q4_0; device RPC0 (a worker on this CPU)"
    )
    print(
        f"{'ngl':>4} {'cpu_moe':>7} {'n_ctx':>6} {'flash':>5} {'llama.cpp MiB':>14} "
        f"{'estimate MiB':>13} {'est/alloc':>9} {'fit/alloc':>9}   (weights/KV/compute MiB)"
    )
    est_ratios, fit_ratios = [], []
    for row in rows:
        case, real, est = row["case"], row["llama"], row["estimate"]
        est_ratio = est["total"] / real["total"]
        fit_ratio = row["fit_total"] / real["total"]
        est_ratios.append(est_ratio)
        fit_ratios.append(fit_ratio)
        print(
            f"{case['n_gpu_layers']:>4} {case['n_cpu_moe']:>7} {case['n_ctx']:>6} "
            f"{'on' if case['flash_attn'] else 'off':>5} {real['total'] / MiB:>14.1f} "
            f"{est['total'] / MiB:>13.1f} {est_ratio:>9.4f} {fit_ratio:>9.4f}   "
            f"({real['weights'] / MiB:.0f}/{real['kv'] / MiB:.0f}/{real['compute'] / MiB:.0f})"
        )
    print(
        f"estimate / allocation: min {min(est_ratios):.4f} max {max(est_ratios):.4f} "
        f"median {statistics.median(est_ratios):.4f} over {len(rows)} placements (goal 0.97-1.03)"
    )
    print(
        f"measured fit / allocation: min {min(fit_ratios):.4f} max {max(fit_ratios):.4f} "
        f"median {statistics.median(fit_ratios):.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
