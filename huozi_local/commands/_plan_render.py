"""Prints a plan for people: the numbers, then one line of reason per choice."""

from __future__ import annotations

from huozi_local.core.planning.planner import Plan
from huozi_local.core.units import format_bytes


def plan_lines(plan: Plan) -> list[str]:
    gpu, cpu = plan.breakdown.gpu, plan.breakdown.cpu
    verdict = {"fits": "fits", "partial": "fits (split GPU/CPU)", "no": "DOES NOT FIT"}
    lines = [
        f"model:        {plan.model}",
        f"verdict:      {verdict[plan.verdict]}",
        f"backend:      {plan.backend}",
        f"n_gpu_layers: {plan.n_gpu_layers} (of {plan.n_layers} layers + output)",
        f"n_cpu_moe:    {plan.n_cpu_moe}"
        + (f" (experts of layers 0-{plan.n_cpu_moe - 1} in RAM)" if plan.n_cpu_moe else ""),
        f"n_ctx:        {plan.n_ctx}",
        f"threads:      {plan.n_threads}",
        f"flash_attn:   {'on' if plan.flash_attn else 'off'}, KV cache {plan.kv_cache_type}",
    ]
    if plan.backend != "cpu":
        lines.append(
            f"GPU memory:   {format_bytes(plan.vram_bytes)} = weights {format_bytes(gpu.weights)}"
            f" + KV {format_bytes(gpu.kv)} + compute {format_bytes(gpu.compute)}"
            f" + backend {format_bytes(gpu.overhead)}"
            f" (budget {format_bytes(plan.vram_budget_bytes)})"
        )
    shared = " incl. the GPU's share (unified memory)" if plan.breakdown.unified else ""
    lines.append(
        f"RAM:          {format_bytes(plan.ram_bytes)} = weights {format_bytes(cpu.weights)}"
        f" + KV {format_bytes(cpu.kv)} + compute {format_bytes(cpu.compute)}"
        f" + process {format_bytes(cpu.overhead)}{shared}"
        f" (budget {format_bytes(plan.ram_budget_bytes)})"
    )
    lines.append("why:")
    lines += [f"  - {reason.text}" for reason in plan.reasons]
    return lines


def print_plan(plan: Plan) -> None:
    print("\n".join(plan_lines(plan)))
