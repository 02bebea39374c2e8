"""Calibrate the memory model: load plans with llama-cpp-python and measure the real memory.

For each plan (context, flash attention, KV type, GPU layers) a fresh child process loads the GGUF
and reports: the buffer sizes llama.cpp logs (model, KV, compute), the process RSS growth, and on
a machine with an NVIDIA GPU the device memory growth (NVML). Each is printed next to the
planner's estimate, with the ratio measured / estimate (the baseline is the estimate of the same
configuration, computed in the same run).

Run: python benchmarks/bench_planner_calibration.py [GGUF] (default: the tiny q4_0 model)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

MiB = 1024**2
BUFFER_RE = re.compile(r"(\w[\w ]*?) (?:model |KV |compute |output )?buffer size =\s*([\d.]+) MiB")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def gpu_used_bytes() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None


def child(path: str, n_ctx: int, ngl: int, flash: bool, kv: str) -> None:
    """Load once and print one JSON line; llama.cpp's log goes to a file we parse."""
    import llama_cpp

    gpu_before = gpu_used_bytes()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    before = rss_bytes()
    try:
        model = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=512,
            n_ubatch=512,
            n_gpu_layers=ngl,
            flash_attn=flash,
            type_k=llama_cpp.GGML_TYPE_Q8_0 if kv == "q8_0" else llama_cpp.GGML_TYPE_F16,
            type_v=llama_cpp.GGML_TYPE_Q8_0 if kv == "q8_0" else llama_cpp.GGML_TYPE_F16,
            verbose=True,
        )
        model.eval(model.tokenize("你好，世界 ".encode() * 40))  # touch the compute buffers once
        after = rss_bytes()
        gpu_after = gpu_used_bytes()
    finally:
        os.dup2(saved, 2)
    text = Path(log.name).read_text(errors="replace")
    buffers: dict[str, float] = {}
    for line in text.splitlines():
        match = BUFFER_RE.search(line)
        if match and "buffer size" in line:
            kind = (
                "kv"
                if "KV" in line
                else "compute"
                if "compute" in line
                else ("output" if "output" in line else "model")
            )
            buffers[kind] = buffers.get(kind, 0.0) + float(match.group(2)) * MiB
    print(
        json.dumps(
            {
                "rss_growth": after - before,
                "gpu_growth": None
                if gpu_before is None or gpu_after is None
                else gpu_after - gpu_before,
                "buffers": buffers,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("gguf", nargs="?")
    parser.add_argument("--child", nargs=5)
    args = parser.parse_args()
    if args.child:
        path, n_ctx, ngl, flash, kv = args.child
        child(path, int(n_ctx), int(ngl), flash == "1", kv)
        return
    from huozi_local.core.gguf.header import read_gguf
    from huozi_local.core.planning.hardware import detect_machine
    from huozi_local.core.planning.memory_model import ModelShape
    from huozi_local.core.planning.planner import evaluate_plan

    path = args.gguf
    if path is None:
        from huozi_local.testing.tiny_model import TinyModels

        root = Path(os.environ.get("HUOZI_TINY_MODELS_DIR", tempfile.gettempdir() + "/tiny1"))
        path = str(TinyModels(root).get(layout="merged", quant="q4_0"))
    shape = ModelShape.from_gguf(read_gguf(Path(path)))
    machine = detect_machine()
    gpu = machine.planning_backend != "cpu"
    layer_options = [0, shape.n_layers // 2 + 1, shape.n_layers + 1] if gpu else [0]
    configs = [
        (ctx, ngl, flash, kv)
        for ngl in layer_options
        for ctx, flash, kv in (
            (512, False, "f16"),
            (2048, False, "f16"),
            (8192, False, "f16"),
            (8192, True, "f16"),
            (8192, True, "q8_0"),
        )
    ]
    print(f"model: {path} ({shape.n_layers} layers, {shape.weight_bytes / MiB:.1f} MiB weights)")
    print(f"backend: {machine.planning_backend}")
    print(
        "ctx  ngl fa kv   | est llama.cpp buffers | logged buffers | ratio | est RSS growth"
        " | measured RSS | ratio | GPU est | GPU measured | ratio"
    )
    for ctx, ngl, flash, kv in configs:
        plan = evaluate_plan(
            shape, machine, n_gpu_layers=ngl, n_ctx=ctx, flash_attn=flash, kv_cache_type=kv
        )
        cpu, dev = plan.breakdown.cpu, plan.breakdown.gpu
        est_buffers = cpu.weights + cpu.kv + cpu.compute + dev.weights + dev.kv + dev.compute
        est_rss = cpu.weights + cpu.kv + cpu.compute  # process overhead is already resident
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    path,
                    str(ctx),
                    str(ngl),
                    "1" if flash else "0",
                    kv,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        measured = json.loads(out)
        logged = sum(measured["buffers"].values())
        gpu_part = ""
        if measured["gpu_growth"] is not None:
            gpu_part = (
                f" | {dev.total / MiB:8.1f} | {measured['gpu_growth'] / MiB:8.1f} | "
                f"{measured['gpu_growth'] / max(dev.total, 1):.2f}"
            )
        print(
            f"{ctx:5d} {ngl:3d} {int(flash)}  {kv:4s} | {est_buffers / MiB:9.1f} MiB"
            f" | {logged / MiB:9.1f} MiB | {logged / est_buffers:.2f}"
            f" | {est_rss / MiB:9.1f} MiB | {measured['rss_growth'] / MiB:9.1f} MiB"
            f" | {measured['rss_growth'] / est_rss:.2f}{gpu_part}"
        )


if __name__ == "__main__":
    main()
