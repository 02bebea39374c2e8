"""The measured fit: before a load that offloads to a GPU, ask llama.cpp what it will allocate.

The planner's weights and KV cache are exact (they come from the file's tensor list), but the
compute buffers are ggml-alloc's peak over a graph no formula pins down. llama.cpp's `no_alloc`
dry run (`chat.loader.dry_run_buffers`) loads only metadata, reserves the graphs against dummy
buffers and logs each device's compute buffer. The fit puts that figure in place of the
estimate; when the corrected total is over the GPU budget it moves more experts to RAM (MoE
files) or fewer layers to the GPU, and checks the new placement with a second dry run. What it
returns is a Plan evaluated again at the placement it settled on, carrying what was measured.

The margin is the planner's own: the budget is free memory minus max(512 MiB, 1/32 of the card),
as llama.cpp's `--fit` keeps a margin (1 GiB by default) free on every device. What-if plans for
other hardware stay analytical: only a local load runs this.
"""

from __future__ import annotations

from huozi_local.core.chat.loader import (
    LoadOptions,
    dry_run_buffers,
    supports_dry_run,
)
from huozi_local.core.devices.buffers import BufferReport
from huozi_local.core.errors import HuoziError
from huozi_local.core.gguf.header import GGUFFile
from huozi_local.core.planning.explain import explain_plan
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.planning.memory_model import ModelShape
from huozi_local.core.planning.plan_model import MeasuredFit, Plan, PlanReason, evaluate_plan

MAX_STEPS = 64


def load_options(plan: Plan) -> LoadOptions:
    """The llama.cpp side of a plan: what the loader is told."""
    return LoadOptions(
        n_ctx=plan.n_ctx,
        n_gpu_layers=plan.n_gpu_layers,
        n_threads=plan.n_threads,
        flash_attn=plan.flash_attn,
        kv_cache_type=plan.kv_cache_type,
        n_cpu_moe=plan.n_cpu_moe,
    )


def needs_fit(machine: Machine, plan: Plan) -> bool:
    """A local load that puts anything on a GPU-typed device (RPC workers' too)."""
    return machine.planning_backend != "cpu" and plan.n_gpu_layers != 0


def _measured_compute(report: BufferReport) -> int:
    return sum(d.compute for d in report.offload_devices().values())


def _smaller(plan: Plan, is_moe: bool) -> tuple[int, int] | None:
    """The next placement down: one more layer's experts in RAM, else one layer fewer."""
    if is_moe and plan.n_cpu_moe < plan.n_layers:
        return plan.n_gpu_layers, plan.n_cpu_moe + 1
    if plan.n_gpu_layers > 0:
        return plan.n_gpu_layers - 1, 0 if not is_moe else min(plan.n_cpu_moe, plan.n_layers)
    return None


def fit_before_load(gguf: GGUFFile, machine: Machine, plan: Plan) -> Plan:
    """`measured_fit` when the load needs one and llama.cpp can dry-run; else `plan` as it is.

    A dry run that fails leaves the plan as it was: the real load then says what is wrong in its
    own words.
    """
    if not needs_fit(machine, plan) or not supports_dry_run():
        return plan
    try:
        return measured_fit(gguf, machine, plan)
    except HuoziError:
        return plan


def measured_fit(gguf: GGUFFile, machine: Machine, plan: Plan) -> Plan:
    """`plan` with llama.cpp's measured compute buffers, at a placement that fits the budget."""
    shape = ModelShape.from_gguf(gguf)

    def at(n_gpu_layers: int, n_cpu_moe: int) -> Plan:
        return evaluate_plan(
            shape,
            machine,
            n_gpu_layers=n_gpu_layers,
            n_ctx=plan.n_ctx,
            quant=plan.quant,
            model=plan.model,
            flash_attn=plan.flash_attn,
            kv_cache_type=plan.kv_cache_type,
            n_batch=plan.n_batch,
            n_cpu_moe=n_cpu_moe,
        )

    report = dry_run_buffers(gguf.path, load_options(plan))
    if not report.offload_devices():  # llama.cpp offloads nothing here: nothing to measure
        return plan
    correction = _measured_compute(report) - plan.breakdown.gpu.compute
    candidate = plan
    is_moe = plan.n_cpu_moe > 0 or gguf.n_expert > 1
    for _ in range(MAX_STEPS):
        if candidate.vram_bytes + correction <= candidate.vram_budget_bytes:
            break
        step = _smaller(candidate, is_moe)
        if step is None:
            break
        candidate = at(*step)
    if candidate is not plan:  # confirm the new placement's own compute buffers
        report = dry_run_buffers(gguf.path, load_options(candidate))
    fit = MeasuredFit(
        estimated_compute=candidate.breakdown.gpu.compute,
        measured_compute=_measured_compute(report),
        planned_n_gpu_layers=plan.n_gpu_layers,
        planned_n_cpu_moe=plan.n_cpu_moe,
        dry_run_buffers={name: d.to_dict() for name, d in report.devices.items()},
    )
    fitted = candidate.with_measured_fit(fit)
    reasons = [r for r in plan.reasons if r.topic == "placement"]
    reasons.append(PlanReason("measured_fit", fit.summary(fitted)))
    return explain_plan(
        fitted.with_reasons(reasons), machine, why_quant=plan.reason("quant"), shape=shape
    )
