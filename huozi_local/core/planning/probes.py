"""The probes behind detect_machine: RAM, CPU, and the GPUs of each vendor (NVML, nvidia-smi,
Metal through sysctl, ROCm through sysfs).

Each takes its external calls as arguments (a command runner, an NVML loader, a sysfs root), so
tests describe any machine, and each turns a failure into a note instead of raising.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
