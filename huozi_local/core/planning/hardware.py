"""What this machine has: CPU, RAM, GPUs, and what the installed llama-cpp-python build can use.

Every probe degrades to "unknown" with a note instead of raising: doctor must still print a report
on a machine with a broken driver, and the planner must still plan for the CPU. Probes are plain
functions with their external calls injectable, so tests drive the failure paths for real.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from huozi_local.core.planning.build_info import BuildInfo, probe_build, reinstall_command

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    backend: str  # "cuda" | "metal" | "rocm" | "rpc" (a `huozi-local worker` elsewhere)
    vram_total_bytes: int
    vram_free_bytes: int
    driver: str = "unknown"
    compute_capability: str = "unknown"


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


def os_reserve_bytes(ram_total: int) -> int:
    """RAM an idle desktop OS and its apps keep: max(2 GiB, 1/8 of RAM)."""
    return max(2 * GiB, ram_total // 8)


def metal_default_working_set(ram_total: int) -> int:
    """macOS's default recommendedMaxWorkingSetSize: about 2/3 of RAM up to 36 GB, 3/4 above."""
    if ram_total <= 36 * GiB:
        return ram_total * 2 // 3
    return ram_total * 3 // 4


# -- CPU and RAM ----------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], str]


def run_command(argv: Sequence[str]) -> str:
    """Run a probe command; its failure is the caller's to turn into a note."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=True)
    return done.stdout


def _sysctl(name: str, run: Runner) -> str | None:
    try:
        return run(["sysctl", "-n", name]).strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def probe_ram(
    meminfo: Path = Path("/proc/meminfo"), run: Runner = run_command
) -> tuple[int, int, list[str]]:
    """(total, available, notes). /proc/meminfo, then sysctl (macOS), then sysconf."""
    notes: list[str] = []
    try:
        fields: dict[str, int] = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * 1024
        if "MemTotal" in fields:
            total = fields["MemTotal"]
            available = fields.get("MemAvailable", fields.get("MemFree", total))
            return total, available, notes
    except OSError:
        pass
    memsize = _sysctl("hw.memsize", run)
    if memsize and memsize.isdigit():
        total = int(memsize)
        notes.append("available RAM estimated (macOS): total minus the OS reserve")
        return total, max(0, total - os_reserve_bytes(total)), notes
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page = os.sysconf("SC_PAGE_SIZE")
        avail_pages = os.sysconf("SC_AVPHYS_PAGES")
        return pages * page, avail_pages * page, notes
    except (ValueError, OSError, AttributeError):
        notes.append("RAM size unknown")
        return 0, 0, notes


def probe_cpu(
    cpuinfo: Path = Path("/proc/cpuinfo"), run: Runner = run_command
) -> tuple[str, int, int, list[str]]:
    """(name, physical cores, logical cores, notes)."""
    notes: list[str] = []
    logical = os.cpu_count() or 1
    name = platform.processor() or platform.machine() or "unknown"
    try:
        text = cpuinfo.read_text()
        cores: set[tuple[str, str]] = set()
        physical_id = "0"
        for line in text.splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "model name":
                name = value
            elif key == "physical id":
                physical_id = value
            elif key == "core id":
                cores.add((physical_id, value))
        physical = len(cores) or logical
        if not cores:
            notes.append("physical cores unknown; using logical count")
        return name, physical, logical, notes
    except OSError:
        pass
    brand = _sysctl("machdep.cpu.brand_string", run)
    physical_text = _sysctl("hw.physicalcpu", run)
    if physical_text and physical_text.isdigit():
        return brand or name, int(physical_text), logical, notes
    notes.append("physical cores unknown; using logical count")
    return name, logical, logical, notes


# -- GPUs -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def probe_nvml(loader: Callable[[], Any] | None = None) -> tuple[list[GPU], list[str]]:
    """CUDA GPUs through NVML (nvidia-ml-py). Raises nothing: failures come back as notes."""
    try:
        if loader is None:
            import pynvml

            nvml: Any = pynvml
        else:
            nvml = loader()
        nvml.nvmlInit()
    except Exception as exc:
        return [], [f"NVML unavailable: {exc}"]
    gpus: list[GPU] = []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{major}.{minor}"
            except Exception:
                capability = "unknown"
            gpus.append(
                GPU(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    backend="cuda",
                    vram_total_bytes=int(memory.total),
                    vram_free_bytes=int(memory.free),
                    driver=driver,
                    compute_capability=capability,
                )
            )
    except Exception as exc:
        return [], [f"NVML query failed: {exc}"]
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return gpus, []


NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=name,memory.total,memory.free,driver_version,compute_cap",
    "--format=csv,noheader,nounits",
]


def probe_nvidia_smi(
    run: Runner = run_command, which: Callable[[str], str | None] = shutil.which
) -> tuple[list[GPU], list[str]]:
    """The fallback when NVML will not load: nvidia-smi's CSV (memory in MiB)."""
    if which("nvidia-smi") is None:
        return [], ["nvidia-smi not found"]
    try:
        output = run(NVIDIA_SMI_QUERY)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], [f"nvidia-smi failed: {exc}"]
    gpus: list[GPU] = []
    for index, line in enumerate(row for row in output.splitlines() if row.strip()):
        parts = [p.strip() for p in line.split(",")]
        try:
            name, total, free, driver, capability = parts
            gpus.append(
                GPU(
                    index,
                    name,
                    "cuda",
                    int(float(total)) * MiB,
                    int(float(free)) * MiB,
                    driver or "unknown",
                    capability or "unknown",
                )
            )
        except ValueError:
            return [], [f"nvidia-smi output not understood: {line[:80]!r}"]
    return gpus, []


def probe_cuda(
    nvml_loader: Callable[[], Any] | None = None,
    run: Runner = run_command,
    which: Callable[[str], str | None] = shutil.which,
) -> tuple[list[GPU], list[str]]:
    gpus, notes = probe_nvml(nvml_loader)
    if gpus:
        return gpus, notes
    smi_gpus, smi_notes = probe_nvidia_smi(run, which)
    return smi_gpus, notes + smi_notes


def probe_metal(
    ram_total: int,
    run: Runner = run_command,
    system: str | None = None,
    arch: str | None = None,
) -> tuple[list[GPU], list[str]]:
    """Apple Silicon: the GPU shares RAM; its budget is the wired limit or macOS's default.

    `system` and `arch` (platform.system() and .machine() when None) let a test describe a Mac
    on Linux, or Linux on a Mac.
    """
    if (system or platform.system()) != "Darwin" or (arch or platform.machine()) != "arm64":
        return [], []
    notes: list[str] = []
    limit_mb = _sysctl("iogpu.wired_limit_mb", run)
    if limit_mb and limit_mb.isdigit() and int(limit_mb) > 0:
        limit = int(limit_mb) * MiB
        notes.append(f"GPU working set from iogpu.wired_limit_mb = {limit_mb}")
    else:
        limit = metal_default_working_set(ram_total)
        notes.append("GPU working set: macOS default (2/3 of RAM up to 36 GB, 3/4 above)")
    name = _sysctl("machdep.cpu.brand_string", run) or "Apple Silicon"
    return [GPU(0, f"{name} GPU", "metal", limit, limit, "Metal", "unknown")], notes


def probe_rocm(drm: Path = Path("/sys/class/drm")) -> tuple[list[GPU], list[str]]:
    """AMD GPUs from amdgpu's sysfs counters (no ROCm tools needed)."""
    gpus: list[GPU] = []
    try:
        cards = sorted(p for p in drm.glob("card*") if re.fullmatch(r"card\d+", p.name))
    except OSError:
        return [], []
    for card in cards:
        device = card / "device"
        try:
            total = int((device / "mem_info_vram_total").read_text().strip())
            used = int((device / "mem_info_vram_used").read_text().strip())
        except (OSError, ValueError):
            continue
        name_file = device / "product_name"
        name = name_file.read_text().strip() if name_file.exists() else f"AMD GPU {card.name}"
        gpus.append(GPU(len(gpus), name, "rocm", total, max(0, total - used), "amdgpu"))
    return gpus, []


# -- the whole machine ----------------------------------------------------------------------


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
