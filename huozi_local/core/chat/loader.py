"""Loading a GGUF into llama-cpp-python with a progress callback, cancel, and one-line errors.

`LoadOptions` is everything llama.cpp is told about a load; keyword arguments for
llama-cpp-python are built from it here and nowhere else. What `Llama` itself cannot take comes
through `HuoziLlama`'s hooks (llama_model.py):
- the progress callback (its return value continues or aborts the load);
- `n_cpu_moe`: the expert tensors of the first N layers stay in CPU memory (llama.cpp's
  `--n-cpu-moe`, as {pattern, CPU buffer type} overrides);
- RPC workers: their devices are registered with ggml and passed in `devices` (llama.cpp's
  default device selection leaves layers on the CPU after a registration);
- `no_alloc`: a dry run that loads only metadata and logs the buffers a real load would
  allocate (`dry_run_buffers`).

A lost RPC worker makes ggml abort the process from the RPC client's own thread. With RPC
devices, the load and every later call that waits on them run in a helper thread
(`rpc_guard`); the abort hook parks the RPC thread for good and the load or the reply gets
`WorkerLost`, so the app keeps running (the model is unusable and never freed).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huozi_local.core.devices import ggml, rpc_guard
from huozi_local.core.devices.buffers import BufferReport, capture_llama_log, parse_buffers
from huozi_local.core.devices.endpoints import Endpoint, parse_endpoint
from huozi_local.core.errors import Cancelled, HuoziError, LegacyLayout, WorkerLost
from huozi_local.core.gguf.header import GGUFFile, read_gguf
from huozi_local.core.progress import ProgressCallback, ThrottledProgress

if TYPE_CHECKING:
    from huozi_local.core.chat.llama_model import HuoziLlama

KV_CACHE_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml type ids (GGML_TYPE_*)
N_CTX_PAD = 256  # llama.cpp rounds every context up to a multiple of this (llama-context.cpp)
PROGRESS_STEPS = 1000


@dataclass(frozen=True)
class LoadOptions:
    """How llama.cpp loads a model: the plan's placement and context, as llama.cpp takes them.

    `n_gpu_layers` counts the output as a layer (llama.cpp's rule: n_layers + 1 is everything);
    `n_cpu_moe` keeps the expert tensors of the first N layers in CPU memory; `rpc_servers`
    ("HOST:PORT") adds those `huozi-local worker`s' devices to this machine's.
    """

    n_ctx: int = 2048
    n_gpu_layers: int = 0
    n_threads: int | None = None
    flash_attn: bool = False
    kv_cache_type: str = "f16"
    n_cpu_moe: int = 0
    seed: int | None = None
    rpc_servers: tuple[str, ...] = ()


def padded_n_ctx(n_ctx: int) -> int:
    """The context llama.cpp will really allocate for a request of `n_ctx` (0: the model's own).

    Asking for exactly that size keeps llama-cpp-python's own buffers (sized by the request) the
    same size as llama.cpp's cache, and makes the padding visible instead of a surprise.
    """
    return -(-n_ctx // N_CTX_PAD) * N_CTX_PAD if n_ctx > 0 else n_ctx


def check_model_file(path: Path, gguf: GGUFFile | None = None) -> GGUFFile:
    """The header of a loadable model file, or a one-line reason it is not one.

    `gguf`: the header the caller already read (a load parses it once).
    """
    if gguf is None:
        if not path.exists():
            raise HuoziError(f"no such model file: {path}")
        if path.is_dir():
            raise HuoziError(f"{path} is a folder, not a GGUF model file")
        gguf = read_gguf(path)  # GGUFError (a HuoziError) for truncated or non-GGUF files
    gguf.check_is_model()
    if gguf.layout == "legacy-split":
        raise LegacyLayout(
            f"{path.name} stores its experts in the pre-2024 layout that llama.cpp no longer "
            "loads: it must be repaired first",
            str(path),
        )
    return gguf


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
        raise HuoziError(f"n_cpu_moe must not be negative, got {n_cpu_moe}")
    devices = model_devices(rpc_servers)
    overrides: list[tuple[str, int]] = []
    if n_cpu_moe:
        cpu = ggml.cpu_buffer_type()
        overrides = [(p, cpu) for p in ggml.expert_override_patterns(n_cpu_moe)]
    return ggml.ModelDeviceParams(devices, overrides), devices


def _llama_kwargs(options: LoadOptions, *, no_alloc: bool) -> dict[str, Any]:
    """llama-cpp-python's keyword arguments for `options`: the one place they are spelled."""
    if options.kv_cache_type not in KV_CACHE_TYPES:
        known = ", ".join(KV_CACHE_TYPES)
        raise HuoziError(f"unknown KV cache type '{options.kv_cache_type}' (use one of: {known})")
    kwargs: dict[str, Any] = {
        "n_ctx": padded_n_ctx(options.n_ctx),
        "n_gpu_layers": options.n_gpu_layers,
        "n_threads": options.n_threads,
        "flash_attn": options.flash_attn,
        "verbose": False,
    }
    if no_alloc:
        kwargs["use_mmap"] = False
    if options.seed is not None:
        kwargs["seed"] = options.seed
    cache_type = KV_CACHE_TYPES[options.kv_cache_type]
    if cache_type != KV_CACHE_TYPES["f16"]:
        kwargs["type_k"] = cache_type
        kwargs["type_v"] = cache_type
    return kwargs


def load_llama(
    path: Path,
    options: LoadOptions,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    no_alloc: bool = False,
) -> HuoziLlama:
    """A `HuoziLlama` for `path`; Cancelled when `cancel` is set during the load.

    `no_alloc` builds a model that holds no weights (see `dry_run_buffers`): never run it.
    """
    import llama_cpp

    from huozi_local.core.chat.llama_model import HuoziLlama, LoadHooks

    kwargs = _llama_kwargs(options, no_alloc=no_alloc)
    reporter = ThrottledProgress(progress, "load", PROGRESS_STEPS)
    device, devices = device_params(options.n_cpu_moe, options.rpc_servers)
    rpc = any(d.is_rpc for d in devices)
    if rpc and rpc_guard.worker_lost() is not None:
        raise WorkerLost(
            "an RPC worker was lost earlier in this session: restart huozi-local to use "
            "RPC workers again"
        )
    stop = threading.Event()  # Ctrl-C during a load that waits on workers (see below)

    def on_progress(fraction: float, _user_data: Any) -> bool:
        if (cancel is not None and cancel.is_set()) or stop.is_set():
            return False
        try:
            reporter.update(int(fraction * PROGRESS_STEPS), f"loading {path.name}")
        except Exception:  # a failing UI callback must not crash inside C code
            return True
        return True

    hooks = LoadHooks(llama_cpp.llama_progress_callback(on_progress), device, no_alloc, rpc)

    def build() -> HuoziLlama:
        return HuoziLlama(str(path), hooks=hooks, **kwargs)

    try:
        # With workers the load waits on them: it runs guarded, so a lost worker is WorkerLost
        # and Ctrl-C stops it at the next progress step (a second one leaves it behind).
        if rpc:
            with _stdio_kept():
                llm = rpc_guard.call_guarded(build, on_interrupt=stop.set)
        else:
            llm = build()
    except (ValueError, RuntimeError) as exc:
        if stop.is_set():
            raise KeyboardInterrupt from None
        if cancel is not None and cancel.is_set():
            raise Cancelled("model load cancelled") from exc
        raise HuoziError(f"llama.cpp could not load {path.name}: {exc}") from exc
    except WorkerLost:
        raise WorkerLost(f"{rpc_guard.lost_message()} while loading {path.name}") from None
    if stop.is_set():
        llm.close()
        raise KeyboardInterrupt
    reporter.update(PROGRESS_STEPS, f"loaded {path.name}", force=True)
    return llm


@contextmanager
def _stdio_kept() -> Iterator[None]:
    """Put stdout and stderr back when a load is left behind.

    A quiet `Llama` load points fds 1 and 2, and sys.stdout/stderr, at /dev/null and back when
    it is done: one left waiting on a lost worker never puts them back, and the line saying
    what happened would go nowhere.
    """
    saved = (os.dup(1), os.dup(2))
    streams = (sys.stdout, sys.stderr)
    try:
        yield
    except BaseException:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        sys.stdout, sys.stderr = streams
        raise
    finally:
        for fd in saved:
            os.close(fd)


class DryRunUnsupported(HuoziError):
    """This llama.cpp has no `no_alloc` (before late 2025): a dry run would be a real load."""


def supports_dry_run() -> bool:
    import llama_cpp

    return any(name == "no_alloc" for name, *_ in llama_cpp.llama_model_params._fields_)


def dry_run_buffers(path: Path, options: LoadOptions) -> BufferReport:
    """What a load with these options allocates on each device, without allocating it.

    llama.cpp's `no_alloc` loads metadata only and reserves the compute graphs against dummy
    buffers; its log gives each device's compute buffer, the part no formula pins down
    (model and KV buffers read 0 here: the planner computes those exactly from the header).
    DryRunUnsupported on a llama.cpp without `no_alloc`: setting the missing field would be
    ignored silently and the "dry run" would load the whole model.
    """
    if not supports_dry_run():
        raise DryRunUnsupported("this llama-cpp-python has no no_alloc dry run")
    with capture_llama_log() as chunks:
        llm = load_llama(path, options, no_alloc=True)
        llm.close()
    return parse_buffers("".join(chunks))
