"""`huozi-local doctor`: this machine, the llama-cpp-python build, and the plan it leads to."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="what this machine has, what the installed llama.cpp can use, and the plan",
        description="Detect CPU, RAM and GPUs, check the llama-cpp-python build, and plan.",
    )
    parser.add_argument("--model", default="huozi3", help="FAMILY[:QUANT] or a .gguf path")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from huozi_local.commands._plan_render import plan_lines
    from huozi_local.core.planning.hardware import detect_machine, reinstall_hint
    from huozi_local.core.planning.planner import plan_for_spec
    from huozi_local.core.units import format_bytes

    machine = detect_machine()
    plan = plan_for_spec(args.model, machine)
    hint = reinstall_hint(machine)
    if args.json:
        report = {
            "machine": asdict(machine),
            "planning_backend": machine.planning_backend,
            "reinstall_hint": hint,
            "plan": plan.to_dict(),
        }
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    print(f"OS:     {machine.os} {machine.arch}")
    print(
        f"CPU:    {machine.cpu_name} ({machine.physical_cores} physical / "
        f"{machine.logical_cores} logical cores)"
    )
    print(
        f"RAM:    {format_bytes(machine.ram_total_bytes)} total, "
        f"{format_bytes(machine.ram_available_bytes)} available"
    )
    for gpu in machine.gpus:
        usable = "" if machine.build.can_use(gpu.backend) else "  <- this build cannot use it"
        print(
            f"GPU {gpu.index}:  {gpu.name} [{gpu.backend}] {format_bytes(gpu.vram_total_bytes)}"
            f" ({format_bytes(gpu.vram_free_bytes)} free), driver {gpu.driver},"
            f" compute {gpu.compute_capability}{usable}"
        )
    if not machine.gpus:
        print("GPU:    none found")
    build = machine.build
    print(
        f"llama-cpp-python: {build.version}, GPU offload "
        f"{'yes' if build.supports_gpu_offload else 'no'}, RPC "
        + (
            "yes (huozi-local worker, --rpc HOST:PORT)"
            if build.supports_rpc
            else 'no (reinstall with CMAKE_ARGS="-DGGML_RPC=on" for worker and --rpc)'
        )
    )
    for device in build.devices:
        print(
            f"  device {device.name} ({device.kind}): {device.description}, "
            f"{format_bytes(device.memory_free_bytes)} free of "
            f"{format_bytes(device.memory_total_bytes)}"
        )
    if build.system_info:
        print(f"  system info: {build.system_info}")
    for note in machine.notes:
        print(f"note:   {note}")
    if hint:
        print(
            "\nThis machine has a GPU the installed llama-cpp-python cannot use. Rebuild it with:"
        )
        print(f"  {hint}")
        print("(needs the GPU toolkit, e.g. CUDA's nvcc, and a C++ compiler; takes a few minutes)")
    print("\nplan:")
    print("\n".join(f"  {line}" for line in plan_lines(plan)))
    return 0
