"""What this machine has: CPU, RAM, GPUs, and what the installed llama-cpp-python build can use.

Every probe degrades to "unknown" with a note instead of raising: doctor must still print a report
on a machine with a broken driver, and the planner must still plan for the CPU. Probes are plain
functions with their external calls injectable, so tests drive the failure paths for real.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from huozi_local.core.planning.build_info import BuildInfo, probe_build, reinstall_command
from huozi_local.core.planning.probes import (
    GPU,
    GiB,
    MiB,
    Runner,
    metal_default_working_set,
    os_reserve_bytes,
    probe_cpu,
    probe_cuda,
    probe_metal,
    probe_ram,
    probe_rocm,
    run_command,
)

__all__ = [
    "GPU",
    "GiB",
    "Machine",
    "MiB",
    "detect_machine",
    "metal_default_working_set",
    "os_reserve_bytes",
    "reinstall_hint",
    "rpc_gpus",
]


@dataclass(frozen=True)
class Machine:
    os: str
    arch: str
    cpu_name: str
    physical_cores: int
    logical_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[GPU, ...]
    build: BuildInfo
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def planning_backend(self) -> str:
        """The backend the planner plans for: a local GPU the build can use, else RPC workers'
        devices (`--rpc`), else the CPU."""
        for gpu in self.gpus:
            if gpu.backend != "rpc" and self.build.can_use(gpu.backend):
                return gpu.backend
        return "rpc" if self.rpc_gpus else "cpu"

    @property
    def rpc_gpus(self) -> tuple[GPU, ...]:
        """Devices of `huozi-local worker`s this process registered (`--rpc`)."""
        return tuple(g for g in self.gpus if g.backend == "rpc")

    @property
    def usable_gpus(self) -> tuple[GPU, ...]:
        """The GPUs llama.cpp offloads to: this machine's, then the RPC workers'."""
        backend = self.planning_backend
        local = tuple(g for g in self.gpus if g.backend == backend and backend != "rpc")
        return local + self.rpc_gpus

    def with_rpc_memory(self, vram_bytes: int) -> Machine:
        """`--vram` with `--rpc`: plan as if each worker's device had this much free."""
        gpus = tuple(
            replace(g, vram_total_bytes=vram_bytes, vram_free_bytes=vram_bytes)
            if g.backend == "rpc"
            else g
            for g in self.gpus
        )
        return replace(self, gpus=gpus)

    @property
    def unusable_gpus(self) -> tuple[GPU, ...]:
        return tuple(
            g for g in self.gpus if g.backend != "rpc" and not self.build.can_use(g.backend)
        )

    @property
    def is_unified_memory(self) -> bool:
        return self.planning_backend == "metal"

    @classmethod
    def synthetic(cls, backend: str, vram_bytes: int, ram_bytes: int, cores: int = 8) -> Machine:
        """A what-if machine. RAM available = total minus what a desktop OS typically holds.

        On Metal `vram_bytes` is the GPU working-set limit; 0 means macOS's default fraction.
        """
        if backend not in ("cpu", "cuda", "metal", "rocm"):
            raise ValueError(f"unknown backend {backend!r}")
        available = max(0, ram_bytes - os_reserve_bytes(ram_bytes))
        gpus: tuple[GPU, ...] = ()
        if backend == "metal":
            limit = vram_bytes or metal_default_working_set(ram_bytes)
            gpus = (GPU(0, "Apple GPU (assumed)", "metal", limit, limit),)
        elif backend in ("cuda", "rocm"):
            gpus = (GPU(0, f"{backend.upper()} GPU (assumed)", backend, vram_bytes, vram_bytes),)
        return cls(
            os="macos" if backend == "metal" else "linux",
            arch="arm64" if backend == "metal" else "x86_64",
            cpu_name="assumed",
            physical_cores=cores,
            logical_cores=cores,
            ram_total_bytes=ram_bytes,
            ram_available_bytes=available,
            gpus=gpus,
            build=BuildInfo.assumed(backend),
            notes=("what-if machine: nothing was detected",),
        )


IGNORE_LOCAL_GPUS_ENV = "HUOZI_IGNORE_LOCAL_GPUS"
"""Set (not "0") to plan as if this machine had no GPU of its own: RPC workers and the CPU only.

For a GPU you want to leave to another program, and for the test suite, whose CLI children run
the real probes and must plan the same on any machine."""


def detect_machine(
    *,
    build: BuildInfo | None = None,
    nvml_loader: Callable[[], Any] | None = None,
    run: Runner = run_command,
    which: Callable[[str], str | None] = shutil.which,
    drm: Path = Path("/sys/class/drm"),
    system: str | None = None,
    arch: str | None = None,
) -> Machine:
    """Probe everything once. Never raises: each probe's failure becomes a note.

    Every probe can be replaced, so tests describe a machine instead of reading the one they run
    on; `system` and `arch` stand in for platform.system() and platform.machine().
    """
    system = system or platform.system()
    arch = arch or platform.machine()
    notes: list[str] = []
    try:
        total, available, ram_notes = probe_ram(run=run)
        notes += ram_notes
    except Exception as exc:  # a probe must not take doctor down
        total, available = 0, 0
        notes.append(f"RAM probe failed: {exc}")
    try:
        cpu_name, physical, logical, cpu_notes = probe_cpu(run=run)
        notes += cpu_notes
    except Exception as exc:
        cpu_name, physical, logical = "unknown", os.cpu_count() or 1, os.cpu_count() or 1
        notes.append(f"CPU probe failed: {exc}")
    gpus: list[GPU] = []
    local_probes: tuple[Callable[[], tuple[list[GPU], list[str]]], ...] = (
        lambda: probe_cuda(nvml_loader, run, which),
        lambda: probe_metal(total, run, system, arch),
        lambda: probe_rocm(drm),
    )
    if os.environ.get(IGNORE_LOCAL_GPUS_ENV, "") not in ("", "0"):
        local_probes = ()
        notes.append(f"local GPUs ignored ({IGNORE_LOCAL_GPUS_ENV} is set)")
    for probe in local_probes:
        try:
            found, probe_notes = probe()
        except Exception as exc:
            found, probe_notes = [], [f"GPU probe failed: {exc}"]
        notes += probe_notes
        gpus += [replace(g, index=len(gpus) + i) for i, g in enumerate(found)]
    try:
        build_info = build if build is not None else probe_build()
    except Exception as exc:
        build_info = BuildInfo(False, "unknown", False, notes=(f"build probe failed: {exc}",))
    notes += list(build_info.notes)
    gpus += rpc_gpus(build_info, first_index=len(gpus))
    if not gpus:
        notes.append("no GPU found: planning for the CPU")
    return Machine(
        os={"Darwin": "macos", "Windows": "windows"}.get(system, system.lower()),
        arch=arch or "unknown",
        cpu_name=cpu_name,
        physical_cores=max(1, physical),
        logical_cores=max(1, logical),
        ram_total_bytes=total,
        ram_available_bytes=available,
        gpus=tuple(gpus),
        build=build_info,
        notes=tuple(notes),
    )


def rpc_gpus(build: BuildInfo, first_index: int = 0) -> list[GPU]:
    """RPC workers' devices in the build's registry, as GPUs with the memory they report."""
    found = [d for d in build.devices if d.backend == "rpc" and d.kind != "cpu"]
    return [
        GPU(
            index=first_index + i,
            name=f"RPC worker {d.description} ({d.name})",
            backend="rpc",
            vram_total_bytes=d.memory_total_bytes,
            vram_free_bytes=d.memory_free_bytes,
        )
        for i, d in enumerate(found)
    ]


def reinstall_hint(machine: Machine) -> str | None:
    """The rebuild command when the machine has a GPU the installed build cannot use."""
    if machine.planning_backend != "cpu":
        return None
    for gpu in machine.gpus:
        if not machine.build.can_use(gpu.backend):
            return reinstall_command(gpu.backend)
    return None
