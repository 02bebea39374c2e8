"""Loading a GGUF into llama-cpp-python with a progress callback, cancel, and one-line errors.

llama-cpp-python's `Llama` takes no progress argument, but llama.cpp's model params carry a
`progress_callback` whose return value continues (True) or aborts (False) the load. `Llama`
builds its params in `__init__` and loads right after, so `_ProgressLlama` installs the callback
the moment `__init__` assigns `model_params`: the only hook between building and loading.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.gguf.header import GGUFFile, read_gguf
from huozi_local.core.progress import ProgressCallback, ThrottledProgress

if TYPE_CHECKING:
    from llama_cpp import Llama

KV_CACHE_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml type ids (GGML_TYPE_*)
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


def load_llama(
    path: Path,
    *,
    n_ctx: int,
    n_gpu_layers: int,
    n_threads: int | None,
    flash_attn: bool,
    kv_cache_type: str,
    seed: int | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> Llama:
    """A llama-cpp-python `Llama` for `path`; Cancelled when `cancel` is set during the load."""
    import llama_cpp

    if kv_cache_type not in KV_CACHE_TYPES:
        known = ", ".join(KV_CACHE_TYPES)
        raise HuoziError(f"unknown KV cache type '{kv_cache_type}' (use one of: {known})")
    cache_type = KV_CACHE_TYPES[kv_cache_type]
    reporter = ThrottledProgress(progress, "load", PROGRESS_STEPS)

    def on_progress(fraction: float, _user_data: Any) -> bool:
        if cancel is not None and cancel.is_set():
            return False
        try:
            reporter.update(int(fraction * PROGRESS_STEPS), f"loading {path.name}")
        except Exception:  # a failing UI callback must not crash inside C code
            return True
        return True

    callback = llama_cpp.llama_progress_callback(on_progress)

    class _ProgressLlama(llama_cpp.Llama):  # type: ignore[misc]
        @property
        def model_params(self) -> Any:
            return self._huozi_model_params

        @model_params.setter
        def model_params(self, params: Any) -> None:
            params.progress_callback = callback
            params.progress_callback_user_data = ctypes.c_void_p(0)
            self._huozi_model_params = params

    kwargs: dict[str, Any] = {
        "n_ctx": n_ctx,
        "n_gpu_layers": n_gpu_layers,
        "n_threads": n_threads,
        "flash_attn": flash_attn,
        "verbose": False,
    }
    if seed is not None:
        kwargs["seed"] = seed
    if cache_type != KV_CACHE_TYPES["f16"]:
        kwargs["type_k"] = cache_type
        kwargs["type_v"] = cache_type
    try:
        llm = _ProgressLlama(str(path), **kwargs)
    except (ValueError, RuntimeError) as exc:
        if cancel is not None and cancel.is_set():
            raise Cancelled("model load cancelled") from exc
        raise HuoziError(f"llama.cpp could not load {path.name}: {exc}") from exc
    llm._huozi_progress_callback = callback  # type: ignore[attr-defined]  # keep it alive
    reporter.update(PROGRESS_STEPS, f"loaded {path.name}", force=True)
    return llm
