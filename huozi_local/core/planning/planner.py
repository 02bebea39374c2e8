"""Which quant, how many GPU layers, how much context: the best configuration that fits.

Pure functions of a ModelShape (memory_model) and a Machine (hardware); deterministic. The rules:

1. The best quant that fits entirely on the GPU (everything on the GPU is several times faster
   than any split), with n_ctx grown from 2048 toward the model's 32768 while it still fits.
2. Otherwise the best quality that fits GPU + RAM, with as many layers on the GPU as fit at
   n_ctx 2048; the context then grows only while that layer count still fits.
3. Otherwise refuse: the plan says fits=False and what it needs against what there is.

A plan is "better" than another by `plan_rank`: fits, then fully on the GPU, then quant quality,
then layers on the GPU, then n_ctx. More memory never gives a worse plan (tested on a grid).

Budgets and the evaluation of one configuration live in plan_model; Plan and evaluate_plan are
re-exported here, the names other modules import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huozi_local.core import huozi
from huozi_local.core.planning.explain import explain_plan
from huozi_local.core.planning.memory_model import ModelShape
from huozi_local.core.planning.plan_model import (
    DEFAULT_BATCH,
    DEFAULT_MAX_CTX,
    Budget,
    Plan,
    PlanReason,
    Verdict,
    evaluate_plan,
    memory_budget,
    plan_rank,
)
from huozi_local.core.units import format_bytes

if TYPE_CHECKING:
    from huozi_local.core.catalog import ModelFamily
    from huozi_local.core.gguf.header import GGUFFile
    from huozi_local.core.planning.hardware import Machine

__all__ = [
    "DEFAULT_BATCH",
    "Budget",
    "Plan",
    "PlanReason",
    "QuantOption",
    "Verdict",
    "choose_plan",
    "evaluate_plan",
    "memory_budget",
    "plan_for_file",
    "plan_for_spec",
    "plan_rank",
    "rank_quants",
]

MIN_CTX = 2048


def _context_steps(shape: ModelShape, max_ctx: int) -> list[int]:
    """Context sizes to try, doubling from MIN_CTX up to the ceiling.

    The ceiling is at least 1 whatever `max_ctx` says (settings are validated, but callers pass
    their own): doubling a zero or negative step never passes it, and the loop would not end.
    """
    ceiling = max(1, min(max_ctx, shape.context_length or DEFAULT_MAX_CTX))
    base = min(MIN_CTX, ceiling)
    steps = [base]
    while steps[-1] * 2 <= ceiling:
        steps.append(steps[-1] * 2)
    if steps[-1] < ceiling:
        steps.append(ceiling)
    return steps


def best_plan_for_shape(
    shape: ModelShape,
    machine: Machine,
    *,
    quant: str | None = None,
    model: str | None = None,
    max_ctx: int = DEFAULT_MAX_CTX,
    n_gpu_layers: int | None = None,
    n_ctx: int | None = None,
    n_cpu_moe: int | None = None,
) -> Plan:
    """The placement that leaves the CPU the fewest bytes to read per token at the base context,
    then the largest context at that placement.

    Two kinds of placement compete (`choose_placement`); a fixed `n_gpu_layers`, `n_cpu_moe` or
    `n_ctx` is kept as given and only the rest is chosen.
    """
    steps = [n_ctx] if n_ctx is not None else _context_steps(shape, max_ctx)

    def evaluate(ngl: int, moe: int, ctx: int, kv: str = "f16") -> Plan:
        return evaluate_plan(
            shape,
            machine,
            n_gpu_layers=ngl,
            n_ctx=ctx,
            quant=quant,
            model=model,
            kv_cache_type=kv,
            n_cpu_moe=moe,
        )

    plan = choose_placement(
        shape, machine, lambda ngl, moe: evaluate(ngl, moe, steps[0]), n_gpu_layers, n_cpu_moe
    )
    if not plan.fits:
        return plan
    why_placement = plan.reasons
    for ctx in steps[1:]:
        grown = evaluate(plan.n_gpu_layers, plan.n_cpu_moe, ctx)
        if not grown.fits and plan.flash_attn:
            grown = evaluate(plan.n_gpu_layers, plan.n_cpu_moe, ctx, "q8_0")
        if not grown.fits:
            break
        plan = grown.with_reasons(list(why_placement))
    return plan


def choose_placement(
    shape: ModelShape,
    machine: Machine,
    evaluate: Callable[[int, int], Plan],
    n_gpu_layers: int | None = None,
    n_cpu_moe: int | None = None,
) -> Plan:
    """Whole-layer split against MoE placement: the one that fits with the fewest CPU bytes/token.

    - Layer split (what llama.cpp's `-ngl` does alone): as many whole layers on the GPU as fit.
    - MoE placement (llama.cpp's `--fit` and `--n-cpu-moe`): every layer's attention, norms,
      router and KV cache and the output on the GPU; the expert tensors of the first N layers in
      RAM, N as small as fits. Per token the CPU reads only n_expert_used/n_expert of those
      experts, while a layer split leaves it whole layers' attention and KV to read.
    A given `n_gpu_layers` or `n_cpu_moe` fixes that part: `n_gpu_layers` alone is a layer split
    (n_cpu_moe 0) and `n_cpu_moe` alone takes as many layers as fit with those experts in RAM.
    """
    n = shape.n_layers
    if machine.planning_backend == "cpu":
        return evaluate(0, 0)
    if n_gpu_layers is not None:
        plan = evaluate(n_gpu_layers, n_cpu_moe or 0)
    elif n_cpu_moe is not None:
        plan = _most_layers(n, lambda ngl: evaluate(ngl, n_cpu_moe))
    if n_gpu_layers is not None or n_cpu_moe is not None:
        return _with_placement(
            plan,
            f"placement: as asked (n_cpu_moe {plan.n_cpu_moe}): per token the CPU reads "
            f"{format_bytes(plan.cpu_bytes_per_token)}",
        )
    layer_split = _most_layers(n, lambda ngl: evaluate(ngl, 0))
    if not shape.is_moe or layer_split.fully_on_gpu:
        return layer_split
    moe_placement = next(
        (p for p in (evaluate(n + 1, moe) for moe in range(1, n + 1)) if p.fits), None
    )
    if moe_placement is None:
        if not layer_split.fits:
            return layer_split
        everything_else = evaluate(n + 1, n)
        return _with_placement(
            layer_split,
            "placement: whole layers: MoE placement does not fit (every layer's attention "
            f"and KV cache and the output alone need {format_bytes(everything_else.vram_bytes)}"
            " of GPU memory)",
        )
    if not layer_split.fits or moe_placement.cpu_bytes_per_token < layer_split.cpu_bytes_per_token:
        return _with_placement(moe_placement, _moe_reason(moe_placement, layer_split))
    return _with_placement(
        layer_split,
        "placement: whole layers: the CPU reads "
        f"{format_bytes(layer_split.cpu_bytes_per_token)} per token, MoE placement (experts of "
        f"{moe_placement.n_cpu_moe} layers in RAM) would read "
        f"{format_bytes(moe_placement.cpu_bytes_per_token)}",
    )


def _with_placement(plan: Plan, text: str) -> Plan:
    return plan.with_reasons([PlanReason("placement", text)])


def _moe_reason(moe: Plan, layer_split: Plan) -> str:
    line = (
        f"placement: MoE: every layer's attention, KV cache and router and the output on the "
        f"GPU, the experts of the first {moe.n_cpu_moe} layers in RAM (n_cpu_moe "
        f"{moe.n_cpu_moe}): per token the CPU reads {format_bytes(moe.cpu_bytes_per_token)} "
        "(only the experts the token uses)"
    )
    if layer_split.fits:
        line += (
            f", against {format_bytes(layer_split.cpu_bytes_per_token)} with the best "
            f"whole-layer split ({layer_split.gpu_repeating_layers} layers on the GPU)"
        )
    return line


def _most_layers(n_layers: int, evaluate: Callable[[int], Plan]) -> Plan:
    for ngl in range(n_layers + 1, -1, -1):
        plan = evaluate(ngl)
        if plan.fits:
            return plan
    return evaluate(0)


@dataclass(frozen=True)
class QuantOption:
    quant: str
    size_bytes: int
    plan: Plan
    verdict: Verdict

    @property
    def fits(self) -> bool:
        return self.plan.fits

    @property
    def n_gpu_layers(self) -> int:
        return self.plan.n_gpu_layers

    @property
    def n_ctx(self) -> int:
        return self.plan.n_ctx

    @property
    def reasons(self) -> tuple[PlanReason, ...]:
        return self.plan.reasons


def rank_quants(
    family: ModelFamily, machine: Machine, *, max_ctx: int = DEFAULT_MAX_CTX
) -> list[QuantOption]:
    """Every quant of the family with its best plan, best quality first."""
    options = []
    for quant in family.by_quality():
        shape = ModelShape.from_manifest(family, quant)
        plan = best_plan_for_shape(
            shape, machine, quant=quant.quant, model=f"{family.name}:{quant.quant}", max_ctx=max_ctx
        )
        why = (
            f"quant: {quant.quant}: "
            + {
                "fits": "runs entirely on " + ("the GPU" if plan.backend != "cpu" else "the CPU"),
                "partial": "split between the GPU and the CPU",
                "no": "does not fit this machine",
            }[plan.verdict]
        )
        plan = explain_plan(plan, machine, why_quant=why, shape=shape)
        options.append(QuantOption(quant.quant, quant.size_bytes, plan, plan.verdict))
    return options


def choose_plan(
    family: ModelFamily,
    machine: Machine,
    *,
    max_ctx: int = DEFAULT_MAX_CTX,
    quant: str | None = None,
    n_ctx: int | None = None,
    n_cpu_moe: int | None = None,
) -> Plan:
    """The family's best plan on this machine (over its quants, or for one quant)."""
    quants = [family.quant(quant)] if quant else family.by_quality()
    candidates: list[tuple[Plan, ModelShape]] = []
    for q in quants:
        shape = ModelShape.from_manifest(family, q)
        plan = best_plan_for_shape(
            shape,
            machine,
            quant=q.quant,
            model=f"{family.name}:{q.quant}",
            max_ctx=max_ctx,
            n_ctx=n_ctx,
            n_cpu_moe=n_cpu_moe,
        )
        candidates.append((plan, shape))
    if not candidates:
        from huozi_local.core.errors import HuoziError

        raise HuoziError(f"{family.name} lists no quantized files")
    best, shape = max(candidates, key=lambda c: plan_rank(c[0]))
    if quant:
        why = f"quant: {best.quant} (as asked)"
    elif best.fully_on_gpu:
        why = f"quant: {best.quant}: the best quality that fits entirely on the GPU"
    elif best.fits and best.backend != "cpu":
        why = (
            f"quant: {best.quant}: no quant fits entirely on the GPU; "
            "the best quality that fits GPU + RAM"
        )
    elif best.fits:
        why = f"quant: {best.quant}: the best quality that fits in RAM"
    else:
        smallest = min(candidates, key=lambda c: c[0].ram_bytes + c[0].vram_bytes)
        best, shape = smallest
        why = f"quant: none fits; {best.quant} is the smallest"
    return explain_plan(best, machine, why_quant=why, shape=shape)


def plan_for_file(
    path_or_gguf: str | Path | GGUFFile,
    machine: Machine,
    *,
    max_ctx: int = DEFAULT_MAX_CTX,
    n_gpu_layers: int | None = None,
    n_ctx: int | None = None,
    n_cpu_moe: int | None = None,
) -> Plan:
    """The plan for one GGUF file, its shape read from the real header (GGUFError if unreadable)."""
    from huozi_local.core.gguf.header import quant_of, read_gguf

    gguf = read_gguf(Path(path_or_gguf)) if isinstance(path_or_gguf, (str, Path)) else path_or_gguf
    shape = ModelShape.from_gguf(gguf)
    quant = quant_of(gguf)
    if n_gpu_layers is not None and n_ctx is None:
        n_ctx = min(MIN_CTX, shape.context_length or MIN_CTX)
    plan = best_plan_for_shape(
        shape,
        machine,
        quant=quant,
        model=str(gguf.path),
        max_ctx=max_ctx,
        n_gpu_layers=n_gpu_layers,
        n_ctx=n_ctx,
        n_cpu_moe=n_cpu_moe,
    )
    asked = n_gpu_layers is not None or n_cpu_moe is not None
    why = f"quant: {quant or 'unknown'} (the file's own)" + (", layers as asked" if asked else "")
    return explain_plan(plan, machine, why_quant=why, shape=shape)


def evaluate_family_plan(
    family: ModelFamily,
    quant: str,
    machine: Machine,
    *,
    n_gpu_layers: int,
    n_ctx: int,
    n_cpu_moe: int = 0,
) -> Plan:
    """One given configuration of a family's quant, explained (for `plan --gpu-layers`)."""
    q = family.quant(quant)
    shape = ModelShape.from_manifest(family, q)
    plan = evaluate_plan(
        shape,
        machine,
        n_gpu_layers=n_gpu_layers,
        n_ctx=n_ctx,
        quant=q.quant,
        model=f"{family.name}:{q.quant}",
        n_cpu_moe=n_cpu_moe,
    )
    return explain_plan(plan, machine, why_quant=f"quant: {q.quant} (as asked)", shape=shape)


def plan_for_spec(
    text: str,
    machine: Machine,
    *,
    max_ctx: int = DEFAULT_MAX_CTX,
    n_ctx: int | None = None,
    n_gpu_layers: int | None = None,
    n_cpu_moe: int | None = None,
) -> Plan:
    """`--model` as the user wrote it: FAMILY, FAMILY:QUANT or a path to a GGUF file."""
    from huozi_local.core.catalog import get_family, parse_model_spec
    from huozi_local.core.errors import HuoziError

    spec = parse_model_spec(text)
    if spec.kind == "path" and spec.path is not None:
        if not spec.path.is_file():
            raise HuoziError(f"no such model file: {spec.path}")
        return plan_for_file(
            spec.path,
            machine,
            max_ctx=max_ctx,
            n_gpu_layers=n_gpu_layers,
            n_ctx=n_ctx,
            n_cpu_moe=n_cpu_moe,
        )
    if spec.kind != "family" or spec.family is None:
        raise HuoziError(f"plan takes a family or a local .gguf file, not '{text}'")
    family = get_family(spec.family)
    if n_gpu_layers is None:
        return choose_plan(
            family, machine, max_ctx=max_ctx, quant=spec.quant, n_ctx=n_ctx, n_cpu_moe=n_cpu_moe
        )
    quant = spec.quant or choose_plan(family, machine, max_ctx=max_ctx).quant
    assert quant is not None
    ctx = n_ctx if n_ctx is not None else huozi.DEFAULT_N_CTX
    return evaluate_family_plan(
        family, quant, machine, n_gpu_layers=n_gpu_layers, n_ctx=ctx, n_cpu_moe=n_cpu_moe or 0
    )
