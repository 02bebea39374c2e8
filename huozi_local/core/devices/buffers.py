"""What llama.cpp allocated on each device, read from its own log lines.

llama.cpp reports every buffer it allocates (src/llama-model.cpp, llama-kv-cache.cpp,
llama-context.cpp):
    load_tensors:   CPU_Mapped model buffer size =  1234.56 MiB
    llama_kv_cache:       RPC0 KV buffer size =   256.00 MiB
    sched_reserve:        RPC0 compute buffer size =   198.02 MiB
    llama_context:  CPU  output buffer size =     0.22 MiB
Its structured breakdown (`llama_get_memory_breakdown`) is C++ only, so the log is the interface:
`capture_llama_log` routes llama.cpp's log to Python for the length of a block, and
`parse_buffers` sums the sizes per device. In a `no_alloc` dry run the model and KV buffers are
dummies of size 0; the compute buffers are the sizes the real load would allocate.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MiB = 1024**2
_LINE = re.compile(
    r"^\s*(?P<source>\w+):\s+(?P<buffer>\S+)\s+(?P<kind>model|KV|compute|output|RS) buffer size"
    r"\s*=\s*(?P<mib>[0-9.]+) MiB"
)
_KIND = {"model": "weights", "KV": "kv", "RS": "kv", "compute": "compute", "output": "output"}


@dataclass
class DeviceBuffers:
    """Bytes of each kind one device (or the host, "CPU") holds."""

    weights: int = 0
    kv: int = 0
    compute: int = 0
    output: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.output

    def to_dict(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "kv": self.kv,
            "compute": self.compute,
            "output": self.output,
            "total": self.total,
        }


@dataclass
class BufferReport:
    """Per device name ("CPU" for every host buffer), the buffers llama.cpp logged."""

    devices: dict[str, DeviceBuffers] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def device(self, name: str) -> DeviceBuffers:
        return self.devices.get(name, DeviceBuffers())

    def offload_devices(self) -> dict[str, DeviceBuffers]:
        return {k: v for k, v in self.devices.items() if k != "CPU"}


def device_of_buffer(buffer: str) -> str:
    """'RPC0[127.0.0.1:50052]' -> 'RPC0', 'CUDA0' -> 'CUDA0', 'CUDA_Host' / 'CPU_Mapped' -> 'CPU'.

    Host buffers (mapped files, pinned staging, repacked weights) are RAM whatever backend
    made them.
    """
    name = buffer.split("[", 1)[0]
    if name.startswith("CPU") or name.endswith("_Host") or name.upper().startswith("BLAS"):
        return "CPU"
    return name.split("_", 1)[0]


def parse_buffers(log_text: str) -> BufferReport:
    report = BufferReport()
    for line in log_text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        report.lines.append(line.strip())
        device = report.devices.setdefault(device_of_buffer(match["buffer"]), DeviceBuffers())
        kind = _KIND[match["kind"]]
        setattr(device, kind, getattr(device, kind) + round(float(match["mib"]) * MiB))
    return report


_capture_lock = threading.Lock()


@contextmanager
def capture_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log text (all levels) while the block runs, then restore
    llama-cpp-python's own logger. One capture at a time per process (the log is global)."""
    import llama_cpp
    from llama_cpp import _logger

    chunks: list[str] = []

    def collect(_level: int, text: bytes | None, _user_data: object) -> None:
        if text:
            chunks.append(text.decode("utf-8", errors="replace"))

    callback = llama_cpp.llama_log_callback(collect)
    with _capture_lock:
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        try:
            yield chunks
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
