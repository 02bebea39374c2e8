"""What the setup and settings screens say about this machine and the quants (no Textual here).

The numbers come from `core.planning.planner` (rank_quants / evaluate_plan) over
`core.planning.hardware`'s machine; this module only turns them into the lines a person reads:
fits / partly on GPU / will not fit, the reason, and the disk space a download needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huozi_local.core import disk
from huozi_local.core.catalog import get_family
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch.disk_space import disk_need
from huozi_local.core.loading.inputs import LoadOverrides
from huozi_local.core.planning.hardware import Machine
from huozi_local.core.planning.plan_model import Verdict
from huozi_local.core.planning.planner import QuantOption
from huozi_local.core.units import format_bytes

VERDICT_LABELS: dict[Verdict, str] = {
    "fits": "fits 可运行",
    "partial": "partly on GPU 部分在 GPU",
    "no": "will not fit 放不下",
}


@dataclass(frozen=True)
class SetupOption:
    family: str
    quant: str
    size_bytes: int
    verdict: Verdict
    n_gpu_layers: int
    n_ctx: int
    reason: str
    needs_repair: bool = False
    """A legacy file: its repaired copy is written before the original goes (peak disk need)."""

    @property
    def spec(self) -> str:
        return f"{self.family}:{self.quant}"

    @property
    def usable(self) -> bool:
        return self.verdict != "no"

    @property
    def line(self) -> str:
        label = VERDICT_LABELS[self.verdict]
        return f"{self.quant:<7} {format_bytes(self.size_bytes):>8}  {label}: {self.reason}"


@dataclass(frozen=True)
class SetupReport:
    hardware_lines: list[str]
    options: list[SetupOption]
    recommended: SetupOption | None
    recommendation: str
    disk_line: str
    free_bytes: int = 0
    models_dir: Path = Path()

    def disk_line_for(self, option: SetupOption | None) -> str:
        return disk_line(option, self.models_dir, self.free_bytes)


def build_setup_report(
    family_name: str,
    paths: Paths,
    settings: Settings,
    machine: Machine,
    disk_probe: Callable[[Path], int] | None = None,
) -> SetupReport:
    from huozi_local.core.planning.planner import choose_plan, rank_quants

    family = get_family(family_name)
    legacy = {q.quant for q in family.quants if q.needs_repair}
    options = [_option(family_name, o, o.quant in legacy) for o in rank_quants(family, machine)]
    best = choose_plan(family, machine)
    recommended = next((o for o in options if o.quant == best.quant and o.usable), None)
    if recommended is None:
        needs = best.reason("shortfall")
        recommendation = (
            f"没有能在本机运行的版本 No quant of {family_name} fits this machine. {needs}"
        )
    else:
        recommendation = "; ".join(
            r.text for r in best.reasons if r.topic in ("quant", "gpu_layers", "context")
        )
    free = (disk_probe or disk.free_disk_bytes)(paths.models_dir)
    return SetupReport(
        _hardware_lines(machine),
        options,
        recommended,
        recommendation,
        disk_line(recommended, paths.models_dir, free),
        free,
        paths.models_dir,
    )


def shown_folder(folder: Path) -> str:
    """A folder as a person reads it: under their home, `~/...`."""
    try:
        return "~/" + folder.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(folder)


def disk_line(option: SetupOption | None, models_dir: Path, free: int) -> str:
    """The peak need and what stays free: a legacy file is repaired as it arrives, so it never
    needs room for a second copy."""
    if option is None:
        return f"磁盘 Disk: {format_bytes(free)} free in {shown_folder(models_dir)}"
    need = disk_need(option.size_bytes, legacy=False, free=free)
    parts = f"download {format_bytes(option.size_bytes)}"
    if option.needs_repair:
        parts += ", repaired as it arrives"
    line = (
        f"磁盘 Disk: needs {format_bytes(need.peak_bytes)} at peak ({parts}) in "
        f"{shown_folder(models_dir)}; "
        f"{format_bytes(free)} free"
    )
    if not need.fits:
        return line + ": NOT ENOUGH SPACE"
    return line + f", {format_bytes(need.left_after_bytes)} left after"


def _option(family_name: str, option: QuantOption, needs_repair: bool) -> SetupOption:
    """One row; the reason is where the layers go, or what is missing when it does not fit."""
    plan = option.plan
    reason = plan.reason("shortfall") if option.verdict == "no" else plan.reason("gpu_layers")
    return SetupOption(
        family=family_name,
        quant=option.quant,
        size_bytes=option.size_bytes,
        verdict=option.verdict,
        n_gpu_layers=option.n_gpu_layers,
        n_ctx=option.n_ctx,
        reason=reason,
        needs_repair=needs_repair,
    )


def _hardware_lines(machine: Machine) -> list[str]:
    lines = [
        f"CPU: {machine.cpu_name} ({machine.physical_cores} cores)",
        f"RAM: {format_bytes(machine.ram_total_bytes)} total, "
        f"{format_bytes(machine.ram_available_bytes)} available",
    ]
    for gpu in machine.gpus:
        usable = "" if machine.build.can_use(gpu.backend) else " (this build cannot use it)"
        lines.append(
            f"GPU: {gpu.name} [{gpu.backend}] {format_bytes(gpu.vram_total_bytes)} total, "
            f"{format_bytes(gpu.vram_free_bytes)} free{usable}"
        )
    if not machine.gpus:
        lines.append("GPU: none found: the model runs on the CPU")
    return lines


def memory_estimate_text(
    settings: Settings,
    paths: Paths,
    machine: Machine,
    overrides: LoadOverrides | None = None,
) -> str:
    """The planner's estimate for the settings as they stand (settings screen): the plan the
    app would load them with."""
    from huozi_local.tui.model_choice import plan_saved_model

    try:
        plan = plan_saved_model(settings, overrides or LoadOverrides(), paths, machine).plan
    except HuoziError as exc:
        return f"内存估计 Memory estimate unavailable: {exc}"
    label = VERDICT_LABELS[plan.verdict]
    experts = f" (experts of {plan.n_cpu_moe} in RAM)" if plan.n_cpu_moe else ""
    return (
        f"内存估计 Estimate for {plan.n_gpu_layers} GPU layers{experts}, context {plan.n_ctx}: "
        f"GPU {format_bytes(plan.vram_bytes)}, RAM {format_bytes(plan.ram_bytes)}: {label}"
    )
