"""What the installed llama-cpp-python build can use, as its own ggml reports it.

NVML and sysctl say what the machine has; only the build's device list says what llama.cpp will
actually offload to. A CUDA card next to a CPU-only wheel (pip builds CPU-only unless CMAKE_ARGS
says otherwise) is the most common reason a local model runs ten times slower than it should, so
doctor compares the two and prints the reinstall command.

llama_cpp is imported inside the probe, never at module import: `huozi-local --help` must not load
a 50 MB shared library.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BuildDevice:
    """One device of the ggml device registry: a device llama.cpp will really use."""

    name: str  # "CPU", "CUDA0", "Metal", "ROCm0", "Vulkan0"
    description: str
    kind: str  # "cpu" | "gpu" | "igpu" | "accel"
    memory_free_bytes: int
    memory_total_bytes: int

    @property
    def backend(self) -> str:
        """The device's backend family in the planner's terms."""
        name = self.name.lower()
        for prefix, backend in (("cuda", "cuda"), ("metal", "metal"), ("mtl", "metal")):
            if name.startswith(prefix):
                return backend
        if name.startswith(("rocm", "hip")):
            return "rocm"
        if name.startswith("vulkan"):
            return "vulkan"
        if name.startswith("rpc"):
            return "rpc"
        return "cpu" if self.kind == "cpu" else name.rstrip("0123456789")


@dataclass(frozen=True)
class BuildInfo:
    """The llama-cpp-python build: version, GPU offload support, its devices and system info."""

    installed: bool
    version: str
    supports_gpu_offload: bool
    devices: tuple[BuildDevice, ...] = ()
    system_info: str = ""
    supports_flash_attn: bool = True
    supports_rpc: bool = False  # built with GGML_RPC: `--rpc` and `worker` work
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def backends(self) -> tuple[str, ...]:
        """GPU backends the build can offload to ('cuda', 'metal', ...), in device order."""
        seen: list[str] = []
        for device in self.devices:
            if device.kind in ("gpu", "igpu") and device.backend not in seen:
                seen.append(device.backend)
        return tuple(seen)

    def can_use(self, backend: str) -> bool:
        if backend == "cpu":
            return True
        if self.devices:
            return backend in self.backends
        # No device list (older builds): trust the one flag llama.cpp gives.
        return self.supports_gpu_offload

    @classmethod
    def assumed(cls, backend: str) -> BuildInfo:
        """A build that can use `backend`, for what-if planning on hardware we do not have."""
        gpu = backend != "cpu"
        return cls(
            installed=True,
            version="assumed",
            supports_gpu_offload=gpu,
            devices=(),
            system_info=f"assumed {backend} build",
            supports_flash_attn=True,
        )


def _list_devices() -> tuple[BuildDevice, ...]:
    """ggml's device registry (core/devices), RPC workers' devices included once registered."""
    from huozi_local.core.devices import ggml

    return tuple(
        BuildDevice(
            name=d.name,
            description=d.description,
            kind=d.kind,
            memory_free_bytes=d.memory_free_bytes,
            memory_total_bytes=d.memory_total_bytes,
        )
        for d in ggml.list_devices()
    )


def probe_build() -> BuildInfo:
    """Ask the installed llama-cpp-python; never raises (a missing library is a note)."""
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError when the shared library will not load
        return BuildInfo(
            installed=False,
            version="not installed",
            supports_gpu_offload=False,
            notes=(f"llama-cpp-python could not be imported: {exc}",),
        )
    notes: list[str] = []
    version = str(getattr(llama_cpp, "__version__", "unknown"))
    try:
        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as exc:
        offload = False
        notes.append(f"llama_supports_gpu_offload failed: {exc}")
    try:
        raw = llama_cpp.llama_print_system_info()
        system_info = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).strip()
    except Exception as exc:
        system_info = ""
        notes.append(f"llama_print_system_info failed: {exc}")
    devices: tuple[BuildDevice, ...] = ()
    try:
        devices = _list_devices()
    except Exception as exc:
        notes.append(f"ggml device list unavailable: {exc}")
    try:
        from huozi_local.core.devices import ggml

        rpc = ggml.supports_rpc()
    except Exception as exc:
        rpc = False
        notes.append(f"RPC support unknown: {exc}")
    flash = hasattr(llama_cpp, "LLAMA_FLASH_ATTN_TYPE_ENABLED") or hasattr(
        llama_cpp.llama_context_params, "flash_attn"
    )
    return BuildInfo(
        installed=True,
        version=version,
        supports_gpu_offload=offload,
        devices=devices,
        system_info=system_info,
        supports_flash_attn=flash,
        supports_rpc=rpc,
        notes=tuple(notes),
    )


CMAKE_FLAGS = {"cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on", "rocm": "-DGGML_HIP=on"}


def running_under_pipx(prefix: str | None = None) -> bool:
    """pipx keeps each app in <PIPX_HOME>/venvs/<app>; the interpreter prefix shows it."""
    parts = Path(prefix or sys.prefix).parts
    return len(parts) >= 3 and parts[-2] == "venvs" and "pipx" in parts[-3].lower()


def reinstall_command(backend: str, *, pipx: bool | None = None) -> str | None:
    """The command that rebuilds llama-cpp-python for `backend` inside this installation.

    `pipx install --force huozi-local` is not enough: pip reuses its cached CPU-only wheel of
    llama-cpp-python. Forcing a source rebuild of that one package (llama-cpp-python's own
    documented recipe: --upgrade --force-reinstall --no-cache-dir with CMAKE_ARGS) is.
    """
    flag = CMAKE_FLAGS.get(backend)
    if flag is None:
        return None
    pip_args = "install --upgrade --force-reinstall --no-cache-dir llama-cpp-python"
    under_pipx = running_under_pipx() if pipx is None else pipx
    if under_pipx:
        return f'CMAKE_ARGS="{flag}" pipx runpip huozi-local {pip_args}'
    python = shlex.quote(sys.executable or "python3")
    env = f'$env:CMAKE_ARGS="{flag}"; ' if os.name == "nt" else f'CMAKE_ARGS="{flag}" '
    return f"{env}{python} -m pip {pip_args}"
