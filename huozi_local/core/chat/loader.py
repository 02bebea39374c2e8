"""Loading a GGUF into llama-cpp-python with a progress callback, cancel, and one-line errors.

llama-cpp-python's `Llama` takes no progress argument and leaves `devices` and
`tensor_buft_overrides` of llama.cpp's model params unused. `Llama` builds its params in
`__init__` and loads right after, so `_HuoziLlama` fills them the moment `__init__` assigns
`model_params`: the only hook between building and loading. Through it come
- the progress callback (its return value continues or aborts the load);
- `n_cpu_moe`: the expert tensors of the first N layers stay in CPU memory (llama.cpp's
  `--n-cpu-moe`, as {pattern, CPU buffer type} overrides);
- RPC workers: their devices are registered with ggml and passed in `devices` (llama.cpp's
  default device selection leaves layers on the CPU after a registration);
- `no_alloc`: a dry run that loads only metadata and logs the buffers a real load would
  allocate (`dry_run_buffers`).

A lost RPC worker makes ggml abort the process from the RPC client's own thread. With RPC
devices, `eval` runs in a helper thread; the abort handler parks the RPC thread for good and
the reply gets `WorkerLost`, so the app keeps running (the model is unusable and never freed).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huozi_local.core.devices import ggml
from huozi_local.core.devices.buffers import BufferReport, capture_llama_log, parse_buffers
from huozi_local.core.devices.endpoints import Endpoint, parse_endpoint
from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.gguf.header import GGUFFile, read_gguf
from huozi_local.core.progress import ProgressCallback, ThrottledProgress

if TYPE_CHECKING:
    from llama_cpp import Llama

KV_CACHE_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml type ids (GGML_TYPE_*)
N_CTX_PAD = 256  # llama.cpp rounds every context up to a multiple of this (llama-context.cpp)


def padded_n_ctx(n_ctx: int) -> int:
    """The context llama.cpp will really allocate for a request of `n_ctx` (0: the model's own).

    Asking for exactly that size keeps llama-cpp-python's own buffers (sized by the request) the
    same size as llama.cpp's cache, and makes the padding visible instead of a surprise.
    """
    return -(-n_ctx // N_CTX_PAD) * N_CTX_PAD if n_ctx > 0 else n_ctx


PROGRESS_STEPS = 1000


def check_model_file(path: Path) -> GGUFFile:
    """The header of a loadable model file, or a one-line reason it is not one."""
    if not path.exists():
        raise HuoziError(f"no such model file: {path}")
    if path.is_dir():
        raise HuoziError(f"{path} is a folder, not a GGUF model file")
    gguf = read_gguf(path)  # GGUFError (a HuoziError) for truncated or non-GGUF files
    if gguf.layout == "legacy-split":
        raise HuoziError(
            f"{path.name} stores its experts in the pre-2024 layout that llama.cpp no longer "
            f"loads: run `huozi-local repair {path}`"
        )
    return gguf


class WorkerLost(HuoziError):
    """An RPC worker went away while the model was using it; the model must be reloaded."""


def _local_offload_devices() -> list[ggml.GgmlDevice]:
    return [d for d in ggml.list_devices() if d.kind != "cpu" and not d.is_rpc]


def model_devices(rpc_servers: Sequence[str | Endpoint]) -> list[ggml.GgmlDevice]:
    """The devices a load with RPC workers offloads to: this machine's GPUs, then theirs.

    Workers come from `rpc_servers` and from those the process registered before (`--rpc`
    registers them when a command starts, so planning sees their memory). Empty without any:
    llama.cpp then picks its own devices, as before.
    """
    endpoints = [e if isinstance(e, Endpoint) else parse_endpoint(e) for e in rpc_servers]
    ggml.add_rpc_servers(endpoints)
    remote = ggml.registered_rpc_devices()
    if not remote:
        return []
    return _local_offload_devices() + list(remote)


def device_params(
    n_cpu_moe: int, rpc_servers: Sequence[str | Endpoint]
) -> tuple[ggml.ModelDeviceParams, list[ggml.GgmlDevice]]:
    if n_cpu_moe < 0:
        raise HuoziError(f"--cpu-moe must not be negative, got {n_cpu_moe}")
    devices = model_devices(rpc_servers)
    overrides: list[tuple[str, int]] = []
    if n_cpu_moe:
        cpu = ggml.cpu_buffer_type()
        overrides = [(p, cpu) for p in ggml.expert_override_patterns(n_cpu_moe)]
    return ggml.ModelDeviceParams(devices, overrides), devices


def _build_llama_class(
    llama_cpp: Any, callback: Any, device: ggml.ModelDeviceParams, *, no_alloc: bool, rpc: bool
) -> Any:
    class _HuoziLlama(llama_cpp.Llama):  # type: ignore[misc]
        _huozi_broken = ""
        uses_rpc = rpc  # the engine's own decode loop then calls llama.cpp through `_guarded`

        @property
        def model_params(self) -> Any:
            return self._huozi_model_params

        @model_params.setter
        def model_params(self, params: Any) -> None:
            params.progress_callback = callback
            params.progress_callback_user_data = ctypes.c_void_p(0)
            device.apply(params)
            if no_alloc:  # with use_mmap=False: llama.cpp maps nothing in a dry run
                params.no_alloc = True
            self._huozi_model_params = params

        def eval(self, tokens: Sequence[int]) -> None:
            self._guarded(super().eval, tokens)

        def sample(self, *args: Any, **kwargs: Any) -> Any:
            return self._guarded(super().sample, *args, **kwargs)

        def _guarded(self, call: Any, *args: Any, **kwargs: Any) -> Any:
            """Run a call that waits on RPC devices where a lost worker cannot hang the reply.

            Both evaluating and sampling synchronise with the devices; when a worker dies
            ggml's RPC thread parks in the abort hook and the call never returns, so it runs
            in a helper thread that is left behind.
            """
            if not rpc:
                return call(*args, **kwargs)
            if self._huozi_broken:
                raise WorkerLost(self._huozi_broken)
            outcome: list[Any] = []
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    outcome.append(call(*args, **kwargs))
                except BaseException as exc:
                    failure.append(exc)

            helper = threading.Thread(target=run, name="huozi-rpc-call", daemon=True)
            helper.start()
            while helper.is_alive():
                helper.join(0.05)
                if ggml.worker_lost() is not None and helper.is_alive():
                    self._abandon()
                    raise WorkerLost(self._huozi_broken)
            if failure:
                raise failure[0]
            return outcome[0]

        def _abandon(self) -> None:
            """Never free this model: freeing would wait on the dead worker forever."""
            self._huozi_broken = (
                f"the RPC worker went away ({ggml.worker_lost()}): this model cannot go on; "
                "restart huozi-local to use it again"
            )
            _ABANDONED.append(self)
            self._stack = ExitStack()
            for part in ("_model", "_ctx", "_batch"):
                inner = getattr(self, part, None)
                if inner is not None:
                    _ABANDONED.append(inner)
                    if hasattr(inner, "_exit_stack"):
                        inner._exit_stack = ExitStack()

        def close(self) -> None:
            if not self._huozi_broken:
                super().close()

    return _HuoziLlama


_ABANDONED: list[Any] = []


def load_llama(
    path: Path,
    *,
    n_ctx: int,
    n_gpu_layers: int,
    n_threads: int | None = None,
    flash_attn: bool = False,
    kv_cache_type: str = "f16",
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    n_cpu_moe: int = 0,
    rpc_servers: Sequence[str | Endpoint] = (),
    no_alloc: bool = False,
) -> Llama:
    """A llama-cpp-python `Llama` for `path`; Cancelled when `cancel` is set during the load.

    `no_alloc` builds a model that holds no weights (see `dry_run_buffers`): never run it.
    """
    import llama_cpp

    if kv_cache_type not in KV_CACHE_TYPES:
        known = ", ".join(KV_CACHE_TYPES)
        raise HuoziError(f"unknown KV cache type '{kv_cache_type}' (use one of: {known})")
    cache_type = KV_CACHE_TYPES[kv_cache_type]
    reporter = ThrottledProgress(progress, "load", PROGRESS_STEPS)
    device, devices = device_params(n_cpu_moe, rpc_servers)
    rpc = any(d.is_rpc for d in devices)
    if rpc:
        if ggml.worker_lost() is not None:
            raise WorkerLost(
                "an RPC worker was lost earlier in this session: restart huozi-local to use "
                "RPC workers again"
            )
        ggml.watch_rpc_workers()

    def on_progress(fraction: float, _user_data: Any) -> bool:
        if cancel is not None and cancel.is_set():
            return False
        try:
            reporter.update(int(fraction * PROGRESS_STEPS), f"loading {path.name}")
        except Exception:  # a failing UI callback must not crash inside C code
            return True
        return True

    callback = llama_cpp.llama_progress_callback(on_progress)
    llama_class = _build_llama_class(llama_cpp, callback, device, no_alloc=no_alloc, rpc=rpc)
    kwargs: dict[str, Any] = {
        "n_ctx": padded_n_ctx(n_ctx),
        "n_gpu_layers": n_gpu_layers,
        "n_threads": n_threads,
        "flash_attn": flash_attn,
        "verbose": False,
    }
    if no_alloc:
        kwargs["use_mmap"] = False
    if seed is not None:
        kwargs["seed"] = seed
    if cache_type != KV_CACHE_TYPES["f16"]:
        kwargs["type_k"] = cache_type
        kwargs["type_v"] = cache_type
    try:
        llm = llama_class(str(path), **kwargs)
    except (ValueError, RuntimeError) as exc:
        if cancel is not None and cancel.is_set():
            raise Cancelled("model load cancelled") from exc
        raise HuoziError(f"llama.cpp could not load {path.name}: {exc}") from exc
    llm._huozi_progress_callback = callback  # keep it alive
    llm._huozi_device_params = device  # the C arrays the model points at
    reporter.update(PROGRESS_STEPS, f"loaded {path.name}", force=True)
    return llm


class DryRunUnsupported(HuoziError):
    """This llama.cpp has no `no_alloc` (before late 2025): a dry run would be a real load."""


def supports_dry_run() -> bool:
    import llama_cpp

    return any(name == "no_alloc" for name, *_ in llama_cpp.llama_model_params._fields_)


def dry_run_buffers(path: Path, **load_kwargs: Any) -> BufferReport:
    """What a load with these settings allocates on each device, without allocating it.

    llama.cpp's `no_alloc` loads metadata only and reserves the compute graphs against dummy
    buffers; its log gives each device's compute buffer, the part no formula pins down
    (model and KV buffers read 0 here: the planner computes those exactly from the header).
    DryRunUnsupported on a llama.cpp without `no_alloc`: setting the missing field would be
    ignored silently and the "dry run" would load the whole model.
    """
    if not supports_dry_run():
        raise DryRunUnsupported("this llama-cpp-python has no no_alloc dry run")
    load_kwargs = {**load_kwargs, "progress": None, "cancel": None, "no_alloc": True}
    with capture_llama_log() as chunks:
        llm = load_llama(path, **load_kwargs)
        llm.close()
    return parse_buffers("".join(chunks))
