"""The reasons a plan gives: one line per decision (backend, quant, layers, context, threads, ...).

Kept apart from the search in planner.py: the planner decides, this module words the decision
the way `plan`, `doctor` and setup show it, with each line tagged by topic so screens choose
lines by what they are about, never by their wording.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from huozi_local.core.planning.memory_model import ModelShape
from huozi_local.core.planning.plan_model import DEFAULT_MAX_CTX, Plan, PlanReason
from huozi_local.core.units import format_bytes

if TYPE_CHECKING:
    from huozi_local.core.planning.hardware import Machine


def explain_plan(plan: Plan, machine: Machine, *, why_quant: str, shape: ModelShape) -> Plan:
    """The plan with its full set of reasons: the search's own (placement) first kept, then one
    line for each choice a person may want to change, and what is short when it does not fit."""
    lines = [
        PlanReason("backend", backend_line(plan, machine)),
        PlanReason("quant", why_quant),
        *plan.reasons,
    ]
    repeating = plan.gpu_repeating_layers
    if plan.backend == "cpu":
        layers = "n_gpu_layers: 0: everything runs on the CPU from RAM (weights mmap'd)"
    elif plan.n_cpu_moe:
        layers = (
            f"n_gpu_layers: {plan.n_gpu_layers}, n_cpu_moe: {plan.n_cpu_moe}: {repeating} of "
            f"{plan.n_layers} layers and the output on the GPU, the experts of layers 0-"
            f"{plan.n_cpu_moe - 1} in RAM (GPU budget {format_bytes(plan.vram_budget_bytes)})"
        )
    elif plan.fully_on_gpu:
        layers = (
            f"n_gpu_layers: {plan.n_gpu_layers}: all {plan.n_layers} layers and the output "
            "on the GPU"
        )
    else:
        layers = (
            f"n_gpu_layers: {plan.n_gpu_layers}: {repeating} of {plan.n_layers} layers"
            f"{' and the output' if plan.n_gpu_layers else ''} on the GPU, the rest on the CPU "
            f"(GPU budget {format_bytes(plan.vram_budget_bytes)})"
        )
    lines.append(PlanReason("gpu_layers", layers))
    ceiling = min(shape.context_length or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
    kv = plan.breakdown.gpu.kv + plan.breakdown.cpu.kv
    ctx_line = f"n_ctx: {plan.n_ctx} (KV cache {format_bytes(kv)} in {plan.kv_cache_type})"
    if plan.n_ctx < ceiling and plan.fits:
        ctx_line += f"; {plan.n_ctx * 2} would not fit or is above the cap"
    lines.append(PlanReason("context", ctx_line))
    lines.append(
        PlanReason(
            "threads",
            f"threads: {plan.n_threads} (physical cores; hyper-threads slow llama.cpp down)",
        )
    )
    if plan.flash_attn:
        flash = "flash attention: on (this build supports it; no n_ctx x heads score matrix)"
    else:
        flash = "flash attention: off (this build does not support it)"
    lines.append(PlanReason("flash_attn", flash))
    if plan.kv_cache_type == "q8_0":
        lines.append(
            PlanReason(
                "kv_cache", "KV cache: q8_0: half the memory of f16, so the context could grow"
            )
        )
    lines.append(
        PlanReason(
            "memory",
            f"memory: GPU {format_bytes(plan.vram_bytes)} of "
            f"{format_bytes(plan.vram_budget_bytes)}, RAM {format_bytes(plan.ram_bytes)} of "
            f"{format_bytes(plan.ram_budget_bytes)} (budgets after headroom)",
        )
    )
    if not plan.fits:
        lines.append(PlanReason("shortfall", needs_line(plan)))
    return plan.with_reasons(lines)


def backend_line(plan: Plan, machine: Machine) -> str:
    if plan.backend != "cpu":
        shown = [
            f"{gpu.name}, {format_bytes(gpu.vram_total_bytes)}, "
            f"{format_bytes(gpu.vram_free_bytes)} free"
            for gpu in machine.usable_gpus
        ]
        return f"backend: {plan.backend} ({'; '.join(shown)})"
    if machine.unusable_gpus:
        names = ", ".join(g.name for g in machine.unusable_gpus)
        return f"backend: cpu: this llama-cpp-python build cannot use {names} (see doctor)"
    return "backend: cpu (no usable GPU)"


def needs_line(plan: Plan) -> str:
    parts = []
    if plan.ram_bytes > plan.ram_budget_bytes:
        parts.append(
            f"RAM {format_bytes(plan.ram_bytes)} (has {format_bytes(plan.ram_budget_bytes)})"
        )
    if plan.vram_bytes > plan.vram_budget_bytes:
        parts.append(
            f"GPU {format_bytes(plan.vram_bytes)} (has {format_bytes(plan.vram_budget_bytes)})"
        )
    return "does not fit: needs " + " and ".join(parts) if parts else "fits"
