"""`huozi-local plan`: what-if planning for any hardware, or for this machine."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from huozi_local.commands._engine_load import (
    add_cpu_moe_option,
    add_rpc_option,
    check_cpu_moe,
    register_rpc_workers,
)

if TYPE_CHECKING:
    from huozi_local.core.planning.hardware import Machine


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="which quant, GPU layers and context fit a machine (this one or a what-if)",
        description=(
            "Plan a model for this machine, or for any hardware with --backend/--vram/--ram. "
            "SIZE is like 8GiB, 24GB or 512MiB (GB = 10^9 bytes, GiB = 2^30)."
        ),
    )
    parser.add_argument(
        "--model", default="huozi3", help="FAMILY[:QUANT] or a path to a .gguf file"
    )
    parser.add_argument("--backend", choices=("cpu", "cuda", "metal", "rocm"))
    parser.add_argument("--vram", metavar="SIZE", help="GPU memory (Metal: GPU working set)")
    parser.add_argument("--ram", metavar="SIZE", help="total RAM")
    parser.add_argument("--cores", type=int, default=None, help="physical cores (what-if)")
    parser.add_argument("--ctx", type=int, default=None, help="use exactly this context size")
    parser.add_argument(
        "--max-ctx", type=int, default=32768, help="largest context to grow to (default 32768)"
    )
    parser.add_argument(
        "--gpu-layers",
        type=int,
        default=None,
        help="evaluate this n_gpu_layers instead of choosing",
    )
    add_cpu_moe_option(parser)
    add_rpc_option(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    import json

    from huozi_local.commands._plan_render import print_plan
    from huozi_local.core.errors import HuoziError
    from huozi_local.core.planning.planner import plan_for_spec

    for name in ("ctx", "max_ctx", "gpu_layers", "cores"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "gpu_layers" else 1):
            raise HuoziError(f"--{name.replace('_', '-')} must be positive, not {value}")
    cpu_moe = check_cpu_moe(args.cpu_moe)
    machine = _machine(args)
    plan = plan_for_spec(
        args.model,
        machine,
        max_ctx=args.max_ctx,
        n_ctx=args.ctx,
        n_gpu_layers=args.gpu_layers,
        n_cpu_moe=cpu_moe,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), ensure_ascii=False, indent=2))
    else:
        print_plan(plan)
    return 0


def _machine(args: argparse.Namespace) -> Machine:
    from huozi_local.core.errors import HuoziError
    from huozi_local.core.planning.hardware import Machine, detect_machine
    from huozi_local.core.planning.memory_model import parse_size
    from huozi_local.core.planning.probes import probe_ram

    if getattr(args, "rpc", None):
        # The workers' devices as they report themselves; --vram stands in for their memory.
        if args.backend or args.ram or args.cores:
            raise HuoziError(
                "--rpc plans for this machine and its workers: drop --backend/--ram/--cores"
            )
        register_rpc_workers(args)
        machine = detect_machine()
        if args.vram:
            try:
                machine = machine.with_rpc_memory(parse_size(args.vram))
            except ValueError as exc:
                raise HuoziError(str(exc)) from None
        return machine
    what_if = args.backend or args.vram or args.ram or args.cores
    if not what_if:
        return detect_machine()
    try:
        vram = parse_size(args.vram) if args.vram else 0
        ram = parse_size(args.ram) if args.ram else None
    except ValueError as exc:
        raise HuoziError(str(exc)) from None
    backend = args.backend or ("cuda" if vram else "cpu")
    if backend in ("cuda", "rocm") and not vram:
        raise HuoziError(f"--backend {backend} needs --vram SIZE")
    if backend == "cpu" and vram:
        raise HuoziError("--vram makes no sense with --backend cpu")
    if ram is None:
        ram = probe_ram()[0]
    return Machine.synthetic(backend, vram, ram, cores=args.cores or 8)
