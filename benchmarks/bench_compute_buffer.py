"""The compute-buffer model against llama.cpp's own allocations, at huozi3's real shapes.

A real-shape huozi3 slice (official dimensions, --layers layers, q4_0, a sparse file) is loaded by
llama.cpp on the CPU; for every n_ctx x n_ubatch x flash attention of the grid it makes a
context, reads the compute buffer llama.cpp logs, and prints the planner's estimate divided by
it. With --rpc it then starts a `huozi-local worker` on 127.0.0.1 (a GPU-typed ggml device that
is really this CPU) and, for each placement of --placements (n_gpu_layers:n_cpu_moe), asks
llama.cpp for a dry run (`no_alloc`: nothing allocated, the compute graphs reserved) and compares
the device's compute buffer with the plan's per-device breakdown (memory_model.device_breakdown),
the figure that decides whether a plan fits a GPU. Weights and KV cache are exact by
construction (header sizes); the compute buffer is the modelled part.

Run: python benchmarks/bench_compute_buffer.py [--layers 2] [--ctx 512,2048] [--rpc]
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from huozi_local.core.devices.buffers import capture_llama_log
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.planning.memory_model import (
    MiB,
    ModelShape,
    Placement,
    device_breakdown,
    estimate_memory,
)
from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf

COMPUTE_LINE = re.compile(r"(?P<buffer>\S+) compute buffer size\s*=\s*(?P<mib>[0-9.]+) MiB")


def compute_buffers(model: Any, n_ctx: int, n_ubatch: int, flash_attn: bool) -> dict[str, int]:
    """Per backend ("CPU", "RPC0", ...), the compute buffer a context of these sizes reserves."""
    import llama_cpp

    with capture_llama_log() as lines:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_ubatch, n_ubatch
        params.flash_attn_type = 1 if flash_attn else 0
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp made no context for n_ctx {n_ctx}")
        llama_cpp.llama_free(ctx)
    found: dict[str, int] = {}
    for match in COMPUTE_LINE.finditer("".join(lines)):
        name = match["buffer"].split("[")[0]
        found[name] = round(float(match["mib"]) * MiB)
    return found


def load(path: Path, n_gpu_layers: int, device_params: Any = None) -> Any:
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.use_extra_bufts = False  # no repacking: the mapped zeros are never read
    if device_params is not None:
        device_params.apply(params)
    with capture_llama_log():  # keep its load chatter off the table
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    return model


def ratio_line(label: str, ratios: list[float]) -> str:
    if not ratios:
        return f"{label}: no data"
    worst = max(ratios, key=lambda r: abs(r - 1))
    return (
        f"{label}: {len(ratios)} configurations, estimate/allocation min {min(ratios):.3f} "
        f"max {max(ratios):.3f} mean {statistics.fmean(ratios):.3f} worst {worst:.3f}"
    )


def rpc_grid(path: Path, shape: ModelShape, contexts: list[int], placements: str) -> None:
    """Device compute buffer: the plan's breakdown against a dry run on an RPC device."""
    from huozi_local.core.chat.loader import LoadOptions, dry_run_buffers
    from huozi_local.testing.rpc_worker import RpcWorker

    pairs = [tuple(int(x) for x in p.split(":")) for p in placements.split(",")]
    print(f"\nRPC device (a worker on 127.0.0.1), n_ubatch 512, {shape.n_layers} layers")
    print(
        "| n_gpu_layers | n_cpu_moe | n_ctx | flash attn | estimate MiB | llama.cpp MiB | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    planning: list[float] = []
    below: list[float] = []
    with RpcWorker() as worker:
        for (ngl, moe), n_ctx, flash in itertools.product(pairs, contexts, (True, False)):
            options = LoadOptions(
                n_ctx=n_ctx,
                n_gpu_layers=ngl,
                n_threads=1,
                flash_attn=flash,
                n_cpu_moe=moe,
                rpc_servers=(str(worker.endpoint),),
            )
            report = dry_run_buffers(path, options)
            allocated = next(iter(report.offload_devices().values())).compute
            estimate = device_breakdown(
                shape, n_gpu_layers=ngl, n_cpu_moe=moe, n_ctx=n_ctx, flash_attn=flash
            ).compute
            ratio = estimate / allocated
            (planning if n_ctx >= 2048 else below).append(ratio)
            print(
                f"| {ngl} | {moe} | {n_ctx} | {'on' if flash else 'off'} "
                f"| {estimate / MiB:.2f} | {allocated / MiB:.2f} | {ratio:.3f} |"
            )
    print(ratio_line("RPC device, n_ctx >= 2048 (what plans use)", planning))
    print(ratio_line("RPC device, n_ctx < 2048", below))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=2, help="layers of the slice (2-4)")
    parser.add_argument("--workdir", type=Path, help="where to write the sparse slice")
    parser.add_argument("--ctx", default="512,2048,8192,16384")
    parser.add_argument("--ubatch", default="64,128,256,512")
    parser.add_argument("--rpc", action="store_true", help="also measure an RPC device")
    parser.add_argument(
        "--placements",
        default="3:0,2:0,1:0,3:1,3:2",
        help="n_gpu_layers:n_cpu_moe pairs for --rpc (defaults fit a 2-layer slice)",
    )
    args = parser.parse_args()
    import llama_cpp

    llama_cpp.llama_backend_init()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="huozi-compute-"))
    path = write_real_shape_gguf(
        workdir / f"huozi3-real-shape-{args.layers}l.gguf", RealShape(n_layers=args.layers)
    )
    shape = ModelShape.from_gguf(read_gguf(path))
    contexts = [int(c) for c in args.ctx.split(",")]
    ubatches = [int(u) for u in args.ubatch.split(",")]
    print(f"real-shape huozi3 slice: {shape.n_layers} layers, CPU backend")
    print("| n_ctx | n_ubatch | flash attn | estimate MiB | llama.cpp MiB | estimate/allocation |")
    print("|---|---|---|---|---|---|")
    model = load(path, 0)
    planning: list[float] = []
    below: list[float] = []
    for n_ctx, n_ubatch, flash in itertools.product(contexts, ubatches, (True, False)):
        allocated = compute_buffers(model, n_ctx, n_ubatch, flash)["CPU"]
        estimate = estimate_memory(
            shape,
            Placement(0, False),
            backend="cpu",
            n_ctx=n_ctx,
            n_ubatch=n_ubatch,
            flash_attn=flash,
        )
        estimated = estimate.cpu.compute - shape.n_vocab * 4  # less the host output buffer
        ratio = estimated / allocated
        (planning if n_ctx >= 2048 else below).append(ratio)
        print(
            f"| {n_ctx} | {n_ubatch} | {'on' if flash else 'off'} | {estimated / MiB:.2f} "
            f"| {allocated / MiB:.2f} | {ratio:.3f} |"
        )
    llama_cpp.llama_model_free(model)
    print(ratio_line("CPU, n_ctx >= 2048 (what plans use)", planning))
    print(ratio_line("CPU, n_ctx < 2048", below))
    if args.rpc:
        rpc_grid(path, shape, contexts, args.placements)


if __name__ == "__main__":
    main()
