"""The planner's per-device estimate against what llama.cpp allocates on an RPC worker's device.

For each placement (n_gpu_layers, n_cpu_moe, n_ctx, flash attention) a model is really loaded
with the worker's device in `llama_model_params.devices`, a context made, and the buffers
llama.cpp logs for that device (model, KV, compute) are set beside
`memory_model.device_breakdown` (the planner's analytical figure) and beside the measured fit
(the planner's weights and KV plus the compute buffers of a `no_alloc` dry run).

Run as a module in a process of its own: ggml's device registry is global and keeps a worker
once registered. `python -m huozi_local.testing.rpc_allocation --model M --rpc HOST:PORT
--placements 3:2:2048:1,...` prints one JSON object per placement (tests and
benchmarks/bench_rpc_allocation.py read them).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PlacementCase:
    n_gpu_layers: int
    n_cpu_moe: int
    n_ctx: int
    flash_attn: bool

    @classmethod
    def parse(cls, text: str) -> PlacementCase:
        ngl, moe, ctx, flash = (int(part) for part in text.split(":"))
        return cls(ngl, moe, ctx, bool(flash))

    def __str__(self) -> str:
        return f"{self.n_gpu_layers}:{self.n_cpu_moe}:{self.n_ctx}:{int(self.flash_attn)}"


def measure(model: Path, endpoint: str, case: PlacementCase) -> dict[str, Any]:
    """One placement: estimate, dry-run fit and llama.cpp's allocation on the RPC device."""
    from huozi_local.core.chat.loader import LoadOptions, dry_run_buffers, load_llama
    from huozi_local.core.devices.buffers import capture_llama_log, parse_buffers
    from huozi_local.core.gguf.header import read_gguf
    from huozi_local.core.planning.memory_model import ModelShape, device_breakdown

    shape = ModelShape.from_gguf(read_gguf(model))
    estimate = device_breakdown(
        shape,
        n_gpu_layers=case.n_gpu_layers,
        n_cpu_moe=case.n_cpu_moe,
        n_ctx=case.n_ctx,
        backend="rpc",
        flash_attn=case.flash_attn,
    )
    options = LoadOptions(
        n_ctx=case.n_ctx,
        n_gpu_layers=case.n_gpu_layers,
        n_cpu_moe=case.n_cpu_moe,
        flash_attn=case.flash_attn,
        n_threads=1,
        rpc_servers=(endpoint,),
    )
    dry = dry_run_buffers(model, options).device("RPC0")
    with capture_llama_log() as chunks:
        llm = load_llama(model, options)
    llm.close()
    real = parse_buffers("".join(chunks)).device("RPC0")
    fitted = estimate.weights + estimate.kv + dry.compute
    return {
        "case": asdict(case),
        "estimate": estimate.to_dict(),
        "dry_run_compute": dry.compute,
        "fit_total": fitted,
        "llama": real.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--rpc", required=True, help="HOST:PORT of a huozi-local worker")
    parser.add_argument("--placements", required=True, help="NGL:CPU_MOE:CTX:FLASH,...")
    args = parser.parse_args(argv)
    for text in args.placements.split(","):
        row = measure(args.model, args.rpc, PlacementCase.parse(text))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
