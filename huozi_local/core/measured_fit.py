"""The measured fit: before a load that offloads to a GPU, ask llama.cpp what it will allocate.

The planner's weights and KV cache are exact (they come from the file's tensor list), but the
compute buffers are ggml-alloc's peak over a graph no formula pins down. llama.cpp's `no_alloc`
dry run (`chat.loader.dry_run_buffers`) loads only metadata, reserves the graphs against dummy
buffers and logs each device's compute buffer. The fit puts that figure in place of the
estimate; when the corrected total is over the GPU budget it moves more experts to RAM (MoE
files) or fewer layers to the GPU, and checks the new placement with a second dry run.

The margin is the planner's own: the budget is free memory minus max(512 MiB, 1/32 of the card),
as llama.cpp's `--fit` keeps a margin (1 GiB by default) free on every device. What-if plans for
other hardware stay analytical: only a local load runs this.

Lives at the core's root because it joins planning (the budget, the placement steps) and chat
(the dry run through the loader), which must not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huozi_local.core.units import format_bytes

if TYPE_CHECKING:
    from huozi_local.core.devices.buffers import BufferReport
    from huozi_local.core.planning.hardware import Machine
    from huozi_local.core.planning.plan_model import Plan

MAX_STEPS = 64


@dataclass(frozen=True)
class FitReport:
    """What the dry run found and what the fit changed."""

    estimated_compute: int  # the planner's GPU compute buffers
    measured_compute: int  # llama.cpp's, from the dry run
    gpu_bytes: int  # the corrected GPU total (planner's weights + KV + overhead, measured compute)
    budget: int
    n_gpu_layers: int
    n_cpu_moe: int
    adjusted: bool
    buffers: dict[str, dict[str, int]]

    @property
    def fits(self) -> bool:
        return self.gpu_bytes <= self.budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimated_compute": self.estimated_compute,
            "measured_compute": self.measured_compute,
            "gpu_bytes": self.gpu_bytes,
            "budget": self.budget,
            "n_gpu_layers": self.n_gpu_layers,
            "n_cpu_moe": self.n_cpu_moe,
            "adjusted": self.adjusted,
            "fits": self.fits,
            "dry_run_buffers": self.buffers,
        }

    def summary(self) -> str:
        line = (
            f"measured fit: GPU compute buffers {format_bytes(self.measured_compute)} "
            f"(estimated {format_bytes(self.estimated_compute)}); GPU total "
            f"{format_bytes(self.gpu_bytes)} of {format_bytes(self.budget)}"
        )
        if self.adjusted:
            line += (
                f"; placement adjusted to n_gpu_layers {self.n_gpu_layers}, "
                f"n_cpu_moe {self.n_cpu_moe}"
            )
        return line


def needs_fit(machine: Machine, load_kwargs: dict[str, Any]) -> bool:
    """A local load that puts anything on a GPU-typed device (RPC workers' too)."""
    return machine.planning_backend != "cpu" and int(load_kwargs.get("n_gpu_layers", 0)) != 0


def _measured_compute(report: BufferReport) -> int:
    return sum(d.compute for d in report.offload_devices().values())


def _evaluate(path: Path, machine: Machine, load_kwargs: dict[str, Any]) -> Plan:
    from huozi_local.core.gguf.header import read_gguf
    from huozi_local.core.planning.memory_model import ModelShape
    from huozi_local.core.planning.plan_model import evaluate_plan

    shape = ModelShape.from_gguf(read_gguf(path))
    n_gpu_layers = int(load_kwargs["n_gpu_layers"])
    if n_gpu_layers < 0:
        n_gpu_layers = shape.n_layers + 1
    return evaluate_plan(
        shape,
        machine,
        n_gpu_layers=n_gpu_layers,
        n_ctx=int(load_kwargs["n_ctx"]),
        flash_attn=bool(load_kwargs.get("flash_attn", False)),
        kv_cache_type=str(load_kwargs.get("kv_cache_type", "f16")),
        n_cpu_moe=int(load_kwargs.get("n_cpu_moe", 0)),
    )


def _smaller(plan: Plan, is_moe: bool) -> tuple[int, int] | None:
    """The next placement down: one more layer's experts in RAM, else one layer fewer."""
    if is_moe and plan.n_cpu_moe < plan.n_layers:
        return plan.n_gpu_layers, plan.n_cpu_moe + 1
    if plan.n_gpu_layers > 0:
        return plan.n_gpu_layers - 1, 0 if not is_moe else min(plan.n_cpu_moe, plan.n_layers)
    return None


def fit_before_load(
    path: Path, machine: Machine, load_kwargs: dict[str, Any]
) -> tuple[dict[str, Any], FitReport | None]:
    """`measured_fit` when the load needs one and llama.cpp can dry-run; else the options as
    they are (None). A dry run that fails leaves the plan as it was: the real load then says
    what is wrong in its own words."""
    from huozi_local.core.chat.loader import supports_dry_run
    from huozi_local.core.errors import HuoziError

    if not needs_fit(machine, load_kwargs) or not supports_dry_run():
        return load_kwargs, None
    try:
        return measured_fit(path, machine, load_kwargs)
    except HuoziError:
        return load_kwargs, None


def measured_fit(
    path: Path, machine: Machine, load_kwargs: dict[str, Any]
) -> tuple[dict[str, Any], FitReport]:
    """Load options corrected by a dry run, and what the dry run found."""
    from huozi_local.core.chat.loader import dry_run_buffers

    kwargs = dict(load_kwargs)
    plan = _evaluate(path, machine, kwargs)
    report = dry_run_buffers(path, **kwargs)
    measured = _measured_compute(report)
    correction = measured - plan.breakdown.gpu.compute
    budget = plan.vram_budget_bytes
    adjusted = False
    candidate = plan
    is_moe = plan.n_cpu_moe > 0 or _is_moe(path)
    steps = 0
    while candidate.vram_bytes + correction > budget and steps < MAX_STEPS:
        step = _smaller(candidate, is_moe)
        if step is None:
            break
        steps += 1
        kwargs["n_gpu_layers"], kwargs["n_cpu_moe"] = step
        candidate = _evaluate(path, machine, kwargs)
        adjusted = True
    if adjusted:  # confirm the new placement's own compute buffers
        report = dry_run_buffers(path, **kwargs)
        measured = _measured_compute(report)
        correction = measured - candidate.breakdown.gpu.compute
    fit = FitReport(
        estimated_compute=candidate.breakdown.gpu.compute,
        measured_compute=measured,
        gpu_bytes=candidate.vram_bytes + correction,
        budget=budget,
        n_gpu_layers=int(kwargs["n_gpu_layers"]),
        n_cpu_moe=int(kwargs.get("n_cpu_moe", 0)),
        adjusted=adjusted,
        buffers={name: d.to_dict() for name, d in report.devices.items()},
    )
    return kwargs, fit


def _is_moe(path: Path) -> bool:
    from huozi_local.core.gguf.header import read_gguf

    return read_gguf(path).n_expert > 1


def with_fit(plan_dict: dict[str, Any], fit: FitReport) -> dict[str, Any]:
    """The plan as `--json` shows it, with the measured fit and the placement it settled on."""
    return {
        **plan_dict,
        "n_gpu_layers": fit.n_gpu_layers,
        "n_cpu_moe": fit.n_cpu_moe,
        "measured_fit": fit.to_dict(),
    }


__all__ = ["FitReport", "fit_before_load", "measured_fit", "needs_fit", "with_fit"]
