"""One configuration's memory against this machine's budgets: the Plan and its evaluation.

Budgets: free VRAM minus a headroom (max(512 MiB, 1/32 of the card): other processes, driver
fragmentation) and available RAM minus 1 GiB. On Metal the GPU budget is the working-set limit and
the GPU's share also counts against RAM, which it shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from huozi_local.core.catalog import quant_rank
from huozi_local.core.planning.memory_model import (
    GiB,
    MemoryEstimate,
    MiB,
    ModelShape,
    Placement,
    cpu_bytes_per_token,
    estimate_memory,
)
from huozi_local.core.units import format_bytes

if TYPE_CHECKING:
    from huozi_local.core.planning.hardware import Machine

Verdict = Literal["fits", "partial", "no"]
"""'fits' (all on the GPU, or in RAM on a CPU machine), 'partial' (split GPU/CPU) or 'no'."""

ReasonTopic = Literal[
    "backend",
    "quant",
    "placement",
    "gpu_layers",
    "context",
    "threads",
    "flash_attn",
    "kv_cache",
    "memory",
    "measured_fit",
    "shortfall",
]
"""What one line of a plan's explanation is about, so a screen picks lines by topic, not wording."""


@dataclass(frozen=True)
class PlanReason:
    """One line of why the plan is what it is (`plan` prints them all, setup picks some)."""

    topic: ReasonTopic
    text: str

    def __str__(self) -> str:
        return self.text


DEFAULT_BATCH = 512
DEFAULT_MAX_CTX = 32768  # the planner grows the context toward this (huozi3's training context)
RAM_HEADROOM = 1 * GiB


def gpu_headroom(vram_total: int) -> int:
    return max(512 * MiB, vram_total // 32)


@dataclass(frozen=True)
class Budget:
    backend: str
    vram: int
    ram: int


def memory_budget(machine: Machine) -> Budget:
    backend = machine.planning_backend
    ram = max(0, machine.ram_available_bytes - RAM_HEADROOM)
    if backend == "cpu":
        return Budget(backend, 0, ram)
    vram = sum(
        max(0, g.vram_free_bytes - gpu_headroom(g.vram_total_bytes)) for g in machine.usable_gpus
    )
    if backend == "metal":
        vram = min(vram, ram)
    return Budget(backend, vram, ram)


@dataclass(frozen=True)
class MeasuredFit:
    """What llama.cpp's own dry run of a load said, and where the fit moved the placement.

    The planner's weights and KV cache are exact; its GPU compute buffers are a formula. The
    dry run measures them; `Plan.with_measured_fit` puts the measured figure in the plan.
    """

    estimated_compute: int
    """The planner's GPU compute buffers for the placement the fit settled on."""
    measured_compute: int
    """llama.cpp's, from the dry run of that placement."""
    planned_n_gpu_layers: int
    planned_n_cpu_moe: int
    """The placement the planner chose before the fit."""
    dry_run_buffers: Mapping[str, Mapping[str, int]]
    """Each device's buffers as the dry run logged them (weights and KV read 0 there)."""

    def summary(self, plan: Plan) -> str:
        """One line: what was measured against the estimate, and what moved (for `plan`)."""
        line = (
            f"measured fit: GPU compute buffers {format_bytes(self.measured_compute)} "
            f"(estimated {format_bytes(self.estimated_compute)}); GPU total "
            f"{format_bytes(plan.vram_bytes)} of {format_bytes(plan.vram_budget_bytes)}"
        )
        if self.adjusted(plan):
            line += (
                f"; placement adjusted to n_gpu_layers {plan.n_gpu_layers}, "
                f"n_cpu_moe {plan.n_cpu_moe}"
            )
        return line

    def adjusted(self, plan: Plan) -> bool:
        """Did the fit move `plan` (the plan it belongs to) away from the planner's choice?"""
        return (plan.n_gpu_layers, plan.n_cpu_moe) != (
            self.planned_n_gpu_layers,
            self.planned_n_cpu_moe,
        )


@dataclass(frozen=True)
class Plan:
    quant: str | None
    model: str
    n_layers: int
    n_gpu_layers: int
    n_ctx: int
    n_threads: int
    n_batch: int
    flash_attn: bool
    kv_cache_type: str
    backend: str
    vram_bytes: int
    ram_bytes: int
    vram_budget_bytes: int
    ram_budget_bytes: int
    fits: bool
    fully_on_gpu: bool
    breakdown: MemoryEstimate
    reasons: tuple[PlanReason, ...] = field(default_factory=tuple)
    # The first n_cpu_moe layers keep their expert tensors (blk.N.ffn_(gate|up|down)_exps) in CPU
    # memory while the rest of those layers is wherever n_gpu_layers puts it; 0 = none.
    n_cpu_moe: int = 0
    # Bytes the CPU reads from RAM per generated token (weights it holds: all of its attention and
    # output, n_expert_used / n_expert of its experts; plus its KV cache): the cost of a split.
    cpu_bytes_per_token: int = 0
    # Set once llama.cpp's dry run has measured the GPU compute buffers (a local GPU load).
    measured_fit: MeasuredFit | None = None

    @property
    def verdict(self) -> Verdict:
        if not self.fits:
            return "no"
        return "fits" if self.fully_on_gpu or self.backend == "cpu" else "partial"

    @property
    def gpu_repeating_layers(self) -> int:
        return Placement.from_n_gpu_layers(self.n_gpu_layers, self.n_layers).gpu_layers

    @property
    def placement(self) -> Placement:
        return Placement.from_n_gpu_layers(
            self.n_gpu_layers, self.n_layers, n_cpu_moe=self.n_cpu_moe
        )

    def with_measured_fit(self, fit: MeasuredFit) -> Plan:
        """This plan with llama.cpp's measured GPU compute buffers in place of the estimate,
        and its totals and verdict computed again from them."""
        gpu = replace(self.breakdown.gpu, compute=fit.measured_compute)
        breakdown = replace(self.breakdown, gpu=gpu)
        return replace(
            self,
            breakdown=breakdown,
            vram_bytes=breakdown.vram_bytes,
            ram_bytes=breakdown.ram_bytes,
            fits=breakdown.vram_bytes <= self.vram_budget_bytes
            and breakdown.ram_bytes <= self.ram_budget_bytes,
            measured_fit=fit,
        )

    def to_dict(self) -> dict[str, Any]:
        data = self._fields_dict()
        if self.measured_fit is not None:
            fit = self.measured_fit
            data["measured_fit"] = {
                "estimated_compute": fit.estimated_compute,
                "measured_compute": fit.measured_compute,
                "gpu_bytes": self.vram_bytes,
                "budget": self.vram_budget_bytes,
                "fits": self.vram_bytes <= self.vram_budget_bytes,
                "adjusted": fit.adjusted(self),
                "planned_n_gpu_layers": fit.planned_n_gpu_layers,
                "planned_n_cpu_moe": fit.planned_n_cpu_moe,
                "dry_run_buffers": {k: dict(v) for k, v in fit.dry_run_buffers.items()},
            }
        return data

    def _fields_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "quant": self.quant,
            "backend": self.backend,
            "n_layers": self.n_layers,
            "n_gpu_layers": self.n_gpu_layers,
            "n_cpu_moe": self.n_cpu_moe,
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "n_batch": self.n_batch,
            "flash_attn": self.flash_attn,
            "kv_cache_type": self.kv_cache_type,
            "vram_bytes": self.vram_bytes,
            "ram_bytes": self.ram_bytes,
            "vram_budget_bytes": self.vram_budget_bytes,
            "ram_budget_bytes": self.ram_budget_bytes,
            "fits": self.fits,
            "fully_on_gpu": self.fully_on_gpu,
            "cpu_bytes_per_token": self.cpu_bytes_per_token,
            "breakdown": {
                "gpu": self.breakdown.gpu.to_dict(),
                "cpu": self.breakdown.cpu.to_dict(),
                "unified_memory": self.breakdown.unified,
            },
            "reasons": [reason.text for reason in self.reasons],
        }

    def with_reasons(self, reasons: list[PlanReason]) -> Plan:
        return replace(self, reasons=tuple(reasons))

    def reason(self, topic: ReasonTopic) -> str:
        """The explanation's line about `topic`, or "" when it has none."""
        return next((r.text for r in self.reasons if r.topic == topic), "")


def plan_rank(plan: Plan) -> tuple[bool, bool, float, int, int, int]:
    """Bigger is better: fits, all on the GPU, quant quality, fewer bytes the CPU reads per token,
    layers on the GPU, context."""
    return (
        plan.fits,
        plan.fully_on_gpu,
        quant_rank(plan.quant or ""),
        -plan.cpu_bytes_per_token,
        plan.n_gpu_layers,
        plan.n_ctx,
    )


def evaluate_plan(
    shape: ModelShape,
    machine: Machine,
    *,
    n_gpu_layers: int,
    n_ctx: int,
    quant: str | None = None,
    model: str | None = None,
    flash_attn: bool | None = None,
    kv_cache_type: str = "f16",
    n_batch: int = DEFAULT_BATCH,
    n_cpu_moe: int = 0,
) -> Plan:
    """The memory and the verdict of one given configuration."""
    budget = memory_budget(machine)
    backend = budget.backend
    ngl = 0 if backend == "cpu" else max(0, min(n_gpu_layers, shape.n_layers + 1))
    use_flash = machine.build.supports_flash_attn if flash_attn is None else flash_attn
    if kv_cache_type != "f16" and not use_flash:
        kv_cache_type = "f16"  # llama.cpp refuses a quantized V cache without flash attention
    moe = 0 if backend == "cpu" or not shape.is_moe else max(0, min(n_cpu_moe, shape.n_layers))
    placement = Placement.from_n_gpu_layers(ngl, shape.n_layers, n_cpu_moe=moe)
    estimate = estimate_memory(
        shape,
        placement,
        backend=backend,
        n_ctx=n_ctx,
        n_ubatch=n_batch,
        kv_type=kv_cache_type,
        flash_attn=use_flash,
    )
    fits = estimate.vram_bytes <= budget.vram and estimate.ram_bytes <= budget.ram
    return Plan(
        quant=quant,
        model=model or shape.name,
        n_layers=shape.n_layers,
        n_gpu_layers=ngl,
        n_ctx=n_ctx,
        n_threads=max(1, machine.physical_cores),
        n_batch=n_batch,
        flash_attn=use_flash,
        kv_cache_type=kv_cache_type,
        backend=backend,
        vram_bytes=estimate.vram_bytes,
        ram_bytes=estimate.ram_bytes,
        vram_budget_bytes=budget.vram,
        ram_budget_bytes=budget.ram,
        fits=fits,
        fully_on_gpu=backend != "cpu" and placement.is_full(shape.n_layers),
        breakdown=estimate,
        n_cpu_moe=moe,
        cpu_bytes_per_token=cpu_bytes_per_token(
            shape, placement if backend != "cpu" else Placement(0, False)
        ),
    )
