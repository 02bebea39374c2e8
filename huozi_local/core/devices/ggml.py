"""ggml's device API and RPC backend through ctypes, on the libraries llama-cpp-python bundles.

llama-cpp-python wraps llama.h only; the device registry (ggml-backend.h) and the RPC backend
(ggml-rpc.h) are reached here. Every symbol is looked up through the handle of the libllama that
llama_cpp already loaded: dlsym on that handle searches its dependencies, so these calls reach the
very libggml instance llama.cpp uses. Loading `lib/libggml.so` by path would not: the wheel stores
`libggml.so` and `libggml.so.0` as two files, and a second copy has its own registry (an RPC
device registered there would be invisible to llama.cpp).

Signatures are those of the llama.cpp vendored in llama-cpp-python 0.3.36:
- `ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint)`
- `void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir,
   size_t n_threads, size_t n_devices, ggml_backend_dev_t * devices)` (blocks forever)
- `void ggml_backend_register(ggml_backend_reg_t reg)`
- `ggml_backend_buffer_type_t ggml_backend_cpu_buffer_type(void)`
- `void ggml_set_abort_callback(ggml_abort_callback_t callback)` (ggml.h; see `rpc_guard`)

ggml never talks to a worker directly: it is given the address of an `rpc_relay` in this
process, which holds the worker to deadlines.

llama_cpp is imported inside functions only: importing this module costs nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huozi_local.core.devices import rpc_guard, rpc_relay
from huozi_local.core.devices.endpoints import Endpoint, probe_worker
from huozi_local.core.errors import HuoziError, WorkerLost

# ggml-backend.h: enum ggml_backend_dev_type (IGPU was inserted before ACCEL in 2025).
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}

_size_p = ctypes.POINTER(ctypes.c_size_t)
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "ggml_backend_dev_count": ([], ctypes.c_size_t),
    "ggml_backend_dev_get": ([ctypes.c_size_t], ctypes.c_void_p),
    "ggml_backend_dev_name": ([ctypes.c_void_p], ctypes.c_char_p),
    "ggml_backend_dev_description": ([ctypes.c_void_p], ctypes.c_char_p),
    "ggml_backend_dev_type": ([ctypes.c_void_p], ctypes.c_int),
    "ggml_backend_dev_memory": ([ctypes.c_void_p, _size_p, _size_p], None),
    "ggml_backend_reg_dev_count": ([ctypes.c_void_p], ctypes.c_size_t),
    "ggml_backend_reg_dev_get": ([ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p),
    "ggml_backend_register": ([ctypes.c_void_p], None),
    "ggml_backend_reg_by_name": ([ctypes.c_char_p], ctypes.c_void_p),
    "ggml_backend_reg_get_proc_address": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
    "ggml_backend_cpu_buffer_type": ([], ctypes.c_void_p),
    "ggml_backend_rpc_add_server": ([ctypes.c_char_p], ctypes.c_void_p),
    "ggml_backend_rpc_start_server": (
        [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p],
        None,
    ),
    "ggml_set_abort_callback": ([ctypes.c_void_p], ctypes.c_void_p),
    # llama.h, not wrapped by llama-cpp-python 0.3.36
    "llama_attach_threadpool": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], None),
}


class TensorBuftOverride(ctypes.Structure):
    """llama.h: struct llama_model_tensor_buft_override (llama_cpp declares no such class)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@dataclass(frozen=True)
class GgmlDevice:
    """One device of ggml's registry, as llama.cpp will use it."""

    name: str  # "CPU", "CUDA0", "Metal", "RPC0"
    description: str  # for RPC devices: the endpoint
    kind: str  # "cpu" | "gpu" | "igpu" | "accel"
    memory_free_bytes: int
    memory_total_bytes: int
    handle: int = field(default=0, compare=False, repr=False)

    @property
    def is_rpc(self) -> bool:
        return self.name.startswith("RPC")


class GgmlLibrary:
    """The ggml functions of the loaded llama.cpp, with their C signatures set."""

    def __init__(self, llama_lib: Any, lib_dir: Path) -> None:
        self._llama_lib = llama_lib
        self._lib_dir = lib_dir
        self._fallbacks: list[ctypes.CDLL] | None = None

    def function(self, name: str) -> Any:
        """The C function `name`, or AttributeError when this build lacks it."""
        func = getattr(self._llama_lib, name, None)
        if func is None:  # Windows: GetProcAddress does not search dependencies
            for lib in self._sibling_libraries():
                func = getattr(lib, name, None)
                if func is not None:
                    break
        if func is None:
            raise AttributeError(f"{name} is not in this llama.cpp build")
        argtypes, restype = _SIGNATURES[name]
        func.argtypes = argtypes
        func.restype = restype
        return func

    def has(self, name: str) -> bool:
        try:
            self.function(name)
        except AttributeError:
            return False
        return True

    def _sibling_libraries(self) -> list[ctypes.CDLL]:
        if self._fallbacks is None:
            self._fallbacks = []
            for stem in ("ggml", "ggml-base", "ggml-rpc"):
                for path in sorted(self._lib_dir.glob(f"{stem}.dll")):
                    self._fallbacks.append(ctypes.CDLL(path.name))  # by name: the loaded one
        return self._fallbacks


@functools.cache
def ggml() -> GgmlLibrary:
    """The ggml of the installed llama-cpp-python, its backends initialised."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    llama_cpp.llama_backend_init()
    return GgmlLibrary(bindings._lib, Path(llama_cpp.__file__).resolve().parent / "lib")


def supports_rpc() -> bool:
    """Whether this llama-cpp-python was built with GGML_RPC (CMAKE_ARGS=-DGGML_RPC=on)."""
    import llama_cpp

    probe = getattr(llama_cpp, "llama_supports_rpc", None)
    if probe is not None and not bool(probe()):
        return False
    return ggml().has("ggml_backend_rpc_add_server")


def _describe(lib: GgmlLibrary, dev: int) -> GgmlDevice:
    name = lib.function("ggml_backend_dev_name")(dev) or b"?"
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    memory = lib.function("ggml_backend_dev_memory")
    if not name.startswith(b"RPC"):
        memory(dev, ctypes.byref(free), ctypes.byref(total))
    elif rpc_guard.worker_lost() is None:  # a lost worker would never answer
        rpc_guard.call_guarded(memory, dev, ctypes.byref(free), ctypes.byref(total))
    description = (lib.function("ggml_backend_dev_description")(dev) or b"").decode(
        errors="replace"
    )
    if name.startswith(b"RPC"):  # ggml knows the relay's address; the user, the worker's
        description = rpc_relay.worker_behind(description)
    kind = int(lib.function("ggml_backend_dev_type")(dev))
    return GgmlDevice(
        name=name.decode(errors="replace"),
        description=description,
        kind=DEVICE_TYPES.get(kind, "unknown"),
        memory_free_bytes=int(free.value),
        memory_total_bytes=int(total.value),
        handle=int(dev),
    )


def list_devices() -> tuple[GgmlDevice, ...]:
    """Every device in ggml's registry (RPC devices once registered), with free/total memory."""
    lib = ggml()
    count = int(lib.function("ggml_backend_dev_count")())
    return tuple(_describe(lib, lib.function("ggml_backend_dev_get")(i)) for i in range(count))


_registered: dict[Endpoint, tuple[GgmlDevice, ...]] = {}
_register_lock = threading.Lock()


def add_rpc_servers(endpoints: Sequence[Endpoint]) -> tuple[GgmlDevice, ...]:
    """Register each worker's devices with ggml (once per process) and return them.

    Each worker is first probed in Python (a wrong address or a busy worker is one line), then
    registered through its relay (`rpc_relay`: ggml gets the relay's address, the relay holds
    the worker to deadlines) in a guarded call (`rpc_guard`): a worker that stalls, hangs up or
    answers garbage during registration is `WorkerLost`, not an abort or a hang.
    """
    if not endpoints:
        return ()
    if not supports_rpc():
        raise HuoziError(
            "this llama-cpp-python was built without RPC support: reinstall it with "
            'CMAKE_ARGS="-DGGML_RPC=on" (see the README)'
        )
    rpc_relay.rpc_timeout()  # a bad HUOZI_RPC_TIMEOUT is one line before anything connects
    lib = ggml()
    devices: list[GgmlDevice] = []
    with _register_lock:
        for endpoint in endpoints:
            if endpoint not in _registered:
                if rpc_guard.worker_lost() is not None:  # ggml's RPC locks may be held for good
                    raise WorkerLost(
                        f"{rpc_guard.lost_message()}: restart huozi-local to use RPC workers"
                    )
                probe_worker(endpoint)
                relay = rpc_relay.relay_for(endpoint)
                rpc_guard.watch_rpc_workers(lib.function("ggml_set_abort_callback"))
                _registered[endpoint] = rpc_guard.call_guarded(_register, lib, endpoint, relay)
            devices.extend(_registered[endpoint])
    return tuple(devices)


def _register(
    lib: GgmlLibrary, endpoint: Endpoint, relay: rpc_relay.WorkerRelay
) -> tuple[GgmlDevice, ...]:
    reg = lib.function("ggml_backend_rpc_add_server")(str(relay.endpoint).encode())
    if not reg:
        raise HuoziError(f"the RPC worker at {endpoint} offers no devices")
    lib.function("ggml_backend_register")(reg)
    count = int(lib.function("ggml_backend_reg_dev_count")(reg))
    get = lib.function("ggml_backend_reg_dev_get")
    return tuple(_describe(lib, get(reg, i)) for i in range(count))


def registered_rpc_devices() -> tuple[GgmlDevice, ...]:
    """Every RPC worker device this process registered (`--rpc` registers them at start)."""
    with _register_lock:
        return tuple(d for devices in _registered.values() for d in devices)


def cpu_buffer_type() -> int:
    return int(ggml().function("ggml_backend_cpu_buffer_type")())


class ModelDeviceParams:
    """`llama_model_params.devices` and `.tensor_buft_overrides`, kept alive with the model.

    Both are NULL-terminated C arrays the model reads during the load (the override patterns
    are kept by pointer), so the arrays and pattern strings live as long as this object, which
    the loader attaches to the `Llama` it built.
    """

    def __init__(
        self, devices: Sequence[GgmlDevice] = (), overrides: Sequence[tuple[str, int]] = ()
    ) -> None:
        self.patterns = [ctypes.create_string_buffer(p.encode()) for p, _ in overrides]
        self.overrides: Any = None
        if overrides:
            self.overrides = (TensorBuftOverride * (len(overrides) + 1))()
            for i, ((_, buft), text) in enumerate(zip(overrides, self.patterns, strict=True)):
                self.overrides[i].pattern = ctypes.cast(text, ctypes.c_char_p)
                self.overrides[i].buft = buft
        self.devices: Any = None
        if devices:
            self.devices = (ctypes.c_void_p * (len(devices) + 1))(*[d.handle for d in devices])

    def apply(self, params: Any) -> None:
        """Point a `llama_model_params` at these arrays (fields left NULL when empty)."""
        if self.devices is not None:
            params.devices = ctypes.cast(self.devices, ctypes.c_void_p)
        if self.overrides is not None:
            params.tensor_buft_overrides = ctypes.cast(self.overrides, ctypes.c_void_p)


def expert_override_patterns(n_cpu_moe: int) -> list[str]:
    """llama.cpp's `--n-cpu-moe N`: the expert tensors of layers 0..N-1 stay in CPU memory."""
    return [rf"blk\.{i}\.ffn_(up|down|gate)_(ch|)exps" for i in range(max(0, n_cpu_moe))]


def start_rpc_server(endpoint: Endpoint, *, n_threads: int, cache_dir: Path | None = None) -> None:
    """Serve this machine's devices (every non-CPU device, or the CPU when there is none).

    Blocks for good: ggml's server loop has no stop call; the process ends it.
    """
    lib = ggml()
    local = [d for d in list_devices() if not d.is_rpc]
    chosen = [d for d in local if d.kind != "cpu"] or [d for d in local if d.kind == "cpu"]
    if not chosen:
        raise HuoziError("this llama.cpp build lists no device to serve")
    handles = (ctypes.c_void_p * len(chosen))(*[d.handle for d in chosen])
    cache = str(cache_dir).encode() if cache_dir is not None else None
    sys.stdout.flush()
    lib.function("ggml_backend_rpc_start_server")(
        str(endpoint).encode(), cache, n_threads, len(chosen), handles
    )
    raise HuoziError(f"the RPC worker could not listen on {endpoint} (port in use?)")
