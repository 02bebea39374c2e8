"""Layer split against MoE placement on a real NVIDIA GPU, at the VRAM budgets users have.

For each budget (--vram, GiB) the planner gives two placements that fit it: the best whole-layer
split (n_cpu_moe 0) and MoE placement (every layer on the GPU, the experts of the first N layers
in RAM). Each runs in a fresh process (clean GPU memory) that loads the model, evaluates a prompt
and decodes, and reports:
- prompt (pp) and decode (tg) tokens/s; printed: MoE placement / layer split, at equal VRAM
  (the baseline is the layer split measured in the same run: llama-cpp-python ships no
  llama-bench);
- NVML's peak memory of that process / the plan's GPU estimate (goal: <= 1.0 and >= 0.95);
- llama.cpp's own CUDA buffers (model, KV, compute) / the plan's per-device breakdown.

The GPU has one budget's worth of memory only in the plan: the process may use more, and the
NVML peak says whether the estimate held.

Model: --model PATH (a repaired huozi3 q4_0), or by default huozi3's full 32 layers at the
official shapes written as a sparse file (huozi_local.testing.real_shape: zero weights, valid
q4_0; decoding speed does not depend on the values, only on the bytes read).

Run (NVIDIA build of llama-cpp-python, nvidia-ml-py installed):
    python benchmarks/bench_gpu_placement.py [--vram 6,8,12,16,24] [--model PATH]
--dry runs the same code on a CPU machine (a 4-layer slice, budgets scaled to it, a short prompt):
a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.core.planning.memory_model import MiB, ModelShape
from huozi_local.core.planning.plan_model import Plan
from huozi_local.core.planning.planner import best_plan_for_shape, evaluate_plan
from huozi_local.testing.real_shape import RealShape, write_real_shape_gguf

BUFFER_LINE = re.compile(
    r"(?P<buffer>\S+)\s+(?P<kind>model|KV|compute) buffer size\s*=\s*(?P<mib>[0-9.]+) MiB"
)
RAM_FOR_PLANS = 64 * GiB


@dataclass(frozen=True)
class Placement:
    budget_gib: float
    kind: str  # "layer split" | "MoE"
    plan: Plan


def plan_pair(shape: ModelShape, vram: int, n_ctx: int) -> list[Placement]:
    """The best whole-layer split and the MoE placement that fit `vram` (either may not fit)."""
    machine = Machine.synthetic("cuda", vram, RAM_FOR_PLANS)
    split = best_plan_for_shape(shape, machine, n_cpu_moe=0, n_ctx=n_ctx)
    n = shape.n_layers
    moe = next(
        (
            p
            for p in (
                evaluate_plan(shape, machine, n_gpu_layers=n + 1, n_ctx=n_ctx, n_cpu_moe=k)
                for k in range(n + 1)
            )
            if p.fits
        ),
        None,
    )
    pair = [Placement(vram / GiB, "layer split", split)] if split.fits else []
    if moe is not None:
        pair.append(Placement(vram / GiB, "MoE", moe))
    return pair


# -- the measuring child process ----------------------------------------------------------------


class NvmlPeak:
    """Peak GPU memory of this process (NVML per-process usage; whole-device use as a fallback)."""

    def __init__(self) -> None:
        self.peak = 0
        self.available = False
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._baseline = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            self.available = True
        except Exception:
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        nvml = self._nvml
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory:
                    return int(proc.usedGpuMemory)
        except Exception:
            pass
        return int(nvml.nvmlDeviceGetMemoryInfo(self._handle).used) - self._baseline

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._sample())

    def stop(self) -> int:
        if self.available:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._sample())
        return self.peak


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Load with the plan's settings, evaluate a prompt, decode; what llama.cpp and NVML saw."""
    import llama_cpp
    from llama_cpp import _logger

    from huozi_local.core.chat.loader import LoadOptions, load_llama

    log: list[str] = []

    def collect(_level: int, text: bytes | None, _user: object) -> None:
        log.append((text or b"").decode(errors="replace"))

    callback = llama_cpp.llama_log_callback(collect)
    nvml = NvmlPeak()
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        options = LoadOptions(
            n_ctx=spec["n_ctx"],
            n_gpu_layers=spec["n_gpu_layers"],
            n_threads=spec["threads"],
            flash_attn=spec["flash_attn"],
            kv_cache_type=spec["kv_cache_type"],
            seed=0,
            n_cpu_moe=spec["n_cpu_moe"],
        )
        llm = load_llama(Path(spec["model"]), options)
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    prompt = [1000 + (i * 7919) % 50000 for i in range(spec["prompt_tokens"])]
    start = time.perf_counter()
    llm.eval(prompt)
    pp_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(spec["gen_tokens"]):
        llm.eval([2000 + i])
    tg_s = time.perf_counter() - start
    buffers: dict[str, dict[str, int]] = {}
    for match in BUFFER_LINE.finditer("".join(log)):
        device = "CPU" if match["buffer"].startswith("CPU") else match["buffer"].split("[")[0]
        if device.endswith("_Host"):
            device = "CPU"
        kinds = buffers.setdefault(device, {})
        kinds[match["kind"]] = kinds.get(match["kind"], 0) + round(float(match["mib"]) * MiB)
    return {
        "pp_tokens_per_s": spec["prompt_tokens"] / pp_s,
        "tg_tokens_per_s": spec["gen_tokens"] / tg_s,
        "nvml_peak_bytes": nvml.stop() if nvml.available else None,
        "buffers": buffers,
    }


# -- the parent: plans, children, the table -----------------------------------------------------


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {result.returncode}"}
    return dict(json.loads(lines[-1]))


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--vram", default="6,8,12,16,24", help="GPU budgets in GiB")
    parser.add_argument(
        "--model", type=Path, help="a huozi3 GGUF (default: a sparse real-shape one)"
    )
    parser.add_argument("--workdir", type=Path, help="where to write the sparse model")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 4)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--dry", action="store_true", help="CPU only: check the script runs")
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="huozi-gpu-bench-"))
    layers = 4 if args.dry else 32
    model = args.model or write_real_shape_gguf(
        workdir / f"huozi3-real-shape-{layers}l.gguf", RealShape(n_layers=layers)
    )
    shape = ModelShape.from_gguf(read_gguf(model))
    budgets = [float(v) * GiB for v in args.vram.split(",")]
    if args.dry:  # scale the budgets to the slice: the same fractions of "everything on the GPU"
        machine = Machine.synthetic("cuda", 1024 * GiB, RAM_FOR_PLANS)
        full = evaluate_plan(shape, machine, n_gpu_layers=layers + 1, n_ctx=args.ctx).vram_bytes
        budgets = [full * b / (28 * GiB) + 1 * GiB for b in budgets]
        args.prompt_tokens, args.gen_tokens = min(args.prompt_tokens, 64), min(args.gen_tokens, 4)
    dry = " [dry run: CPU, numbers mean nothing]" if args.dry else ""
    print(f"model: {model} ({shape.n_layers} layers){dry}")
    print(f"n_ctx {args.ctx}, prompt {args.prompt_tokens} tokens, decode {args.gen_tokens} tokens")
    header = (
        "| budget GiB | placement | ngl | n_cpu_moe | est. GPU GiB | NVML peak GiB | peak/est "
        "| model est/alloc | KV est/alloc | compute est/alloc | pp t/s | tg t/s |"
    )
    print(header)
    print("|" + "---|" * 12)
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        pair = plan_pair(shape, int(budget), args.ctx)
        measured: dict[str, dict[str, Any]] = {}
        for placement in pair:
            plan = placement.plan
            spec = {
                "model": str(model),
                "n_ctx": plan.n_ctx,
                "n_gpu_layers": plan.n_gpu_layers,
                "n_cpu_moe": plan.n_cpu_moe,
                "flash_attn": plan.flash_attn,
                "kv_cache_type": plan.kv_cache_type,
                "threads": args.threads,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
            }
            result = run_child(spec, args.timeout)
            measured[placement.kind] = result
            gpu = plan.breakdown.gpu
            buffers: dict[str, dict[str, int]] = result.get("buffers", {})
            device = next((v for k, v in buffers.items() if k != "CPU"), {})
            row = {
                "budget_gib": round(placement.budget_gib, 2),
                "placement": placement.kind,
                "plan": plan.to_dict(),
                **result,
            }
            rows.append(row)
            if "error" in result:
                print(
                    f"| {placement.budget_gib:.1f} | {placement.kind} | {plan.n_gpu_layers} "
                    f"| {plan.n_cpu_moe} | {_gib(plan.vram_bytes)} | error: {result['error']} |"
                )
                continue
            print(
                f"| {placement.budget_gib:.1f} | {placement.kind} | {plan.n_gpu_layers} "
                f"| {plan.n_cpu_moe} | {_gib(plan.vram_bytes)} | {_gib(result['nvml_peak_bytes'])} "
                f"| {_ratio(result['nvml_peak_bytes'], plan.vram_bytes)} "
                f"| {_ratio(gpu.weights, device.get('model'))} "
                f"| {_ratio(gpu.kv, device.get('KV'))} "
                f"| {_ratio(gpu.compute, device.get('compute'))} "
                f"| {result['pp_tokens_per_s']:.1f} | {result['tg_tokens_per_s']:.2f} |"
            )
        split, moe = measured.get("layer split", {}), measured.get("MoE", {})
        if "pp_tokens_per_s" in split and "pp_tokens_per_s" in moe:
            print(
                f"|  {budget / GiB:.1f} GiB: MoE / layer split | prompt "
                f"{_ratio(moe['pp_tokens_per_s'], split['pp_tokens_per_s'])} (goal >= 1.5) "
                f"| decode {_ratio(moe['tg_tokens_per_s'], split['tg_tokens_per_s'])} "
                "(goal >= 1.05) |"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
