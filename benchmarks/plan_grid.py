"""The planner's choice for every family on the hardware grid of issue #4 (for the closing note).

Run: python benchmarks/plan_grid.py [--family huozi3] [--markdown]
Sizes are binary (a "24 GB" card has 24 GiB); RAM available = total minus the OS reserve.
"""

from __future__ import annotations

import argparse

from huozi_local.core.catalog import get_family
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.core.planning.planner import choose_plan
from huozi_local.core.units import format_bytes

GRID: list[tuple[str, int, int]] = (
    [("cpu", 0, ram) for ram in (16, 32, 64)]
    + [("cuda", vram, 64) for vram in (6, 8, 12, 16, 24, 48, 80)]
    + [("metal", 0, ram) for ram in (16, 32, 64, 128)]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", default="huozi3")
    parser.add_argument("--cuda-ram", type=int, default=64, help="RAM (GiB) of the CUDA rows")
    args = parser.parse_args()
    family = get_family(args.family)
    header = (
        "| machine | quant | n_gpu_layers | n_cpu_moe | n_ctx | KV | GPU est. | RAM est. "
        "| CPU reads/token | verdict |"
    )
    print(f"family: {family.name}")
    print(header)
    print("|" + "---|" * 10)
    for backend, vram, ram in GRID:
        if backend == "cuda":
            ram = args.cuda_ram
        machine = Machine.synthetic(backend, vram * GiB, ram * GiB)
        plan = choose_plan(family, machine)
        label = {
            "cpu": f"CPU only, {ram} GiB RAM",
            "cuda": f"CUDA {vram} GiB + {ram} GiB RAM",
            "metal": f"Metal {ram} GiB unified",
        }[backend]
        verdict = (
            ("all on GPU" if plan.fully_on_gpu else ("split" if plan.backend != "cpu" else "CPU"))
            if plan.fits
            else "does not fit"
        )
        print(
            f"| {label} | {plan.quant} | {plan.n_gpu_layers}/{plan.n_layers + 1} "
            f"| {plan.n_cpu_moe} | {plan.n_ctx} | {plan.kv_cache_type} "
            f"| {format_bytes(plan.vram_bytes)} | {format_bytes(plan.ram_bytes)} "
            f"| {plan.cpu_bytes_per_token / 1e9:.2f} GB | {verdict} |"
        )


if __name__ == "__main__":
    main()
