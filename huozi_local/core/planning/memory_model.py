"""How much GPU memory and RAM llama.cpp needs for a model, a placement and a context size.

The model follows llama.cpp's own placement and allocation rules (src/llama-model.cpp,
src/llama-kv-cache.cpp, ggml-alloc), not guesses:

- Token embeddings always stay on the CPU ("very little benefit to offloading the input layer").
- Placement of `n_gpu_layers` (current llama.cpp, and so llama-cpp-python 0.3.x): the output layer
  counts as layer number n_layer, `i_gpu_start = n_layer + 1 - n_gpu_layers`, so n_gpu_layers = k
  puts the output layer and the last k-1 repeating layers on the GPU; n_layer + 1 puts everything.
  Until late 2025 (and in February 2024, when the README's figures were measured)
  `i_gpu_start = n_layer - n_gpu_layers`: k repeating layers, the output only when k > n_layer.
  `Placement.from_n_gpu_layers(..., legacy=True)` reproduces that for the published figures.
- MoE placement (`--n-cpu-moe N`, done through `tensor_buft_overrides`): the expert tensors
  `blk.I.ffn_(gate|up|down)_exps` of layers I < N stay in CPU memory whatever n_gpu_layers says;
  the rest of those layers (attention, norms, router) and their KV cache stay on the GPU.
- KV cache: per layer 2 x n_ctx x n_head_kv x head_dim x bytes(type), kept with its layer.
- Compute buffers: ggml-alloc's peak of one ubatch's graph on each backend, a formula from the
  graph measured against llama.cpp's own allocations (compute_buffer.py).
- A fixed per-backend overhead on the device (CUDA context, cuBLAS workspace and the CUDA memory
  pool's dequantization buffers; Metal's command buffers) and in the process (runtime, tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass

from huozi_local.core.planning.compute_buffer import (
    GraphPart,
    compute_buffer_bytes,
    op_offload_copy,
)
from huozi_local.core.planning.model_shape import (
    RECIPES,
    TYPE_BYTES_PER_WEIGHT,
    GiB,
    MiB,
    ModelShape,
    kv_bytes_per_element,
)

__all__ = [
    "RECIPES",
    "REFERENCE_CONTEXT",
    "TYPE_BYTES_PER_WEIGHT",
    "DeviceMemory",
    "GiB",
    "MemoryEstimate",
    "MiB",
    "ModelShape",
    "Placement",
    "cpu_bytes_per_token",
    "device_breakdown",
    "estimate_memory",
    "kv_bytes_per_element",
    "kv_cache_bytes",
    "parse_size",
]

# Device memory a backend takes before any tensor: measured CUDA contexts with cuBLAS loaded
# take 300-500 MiB on nvidia-smi, and the CUDA pool keeps the f16 dequantization buffer of the
# largest matrix it multiplied in a batch (a 14336 x 4096 expert: 112 MiB). An RPC device is
# memory on another process's backend: nothing but the buffers llama.cpp allocates in it.
BACKEND_DEVICE_OVERHEAD = {
    "cuda": 480 * MiB,
    "rocm": 560 * MiB,
    "metal": 96 * MiB,
    "cpu": 0,
    "rpc": 0,
}
# Host memory of the process itself: Python, the app, llama.cpp's vocabulary and mmap bookkeeping;
# GPU runtimes add their host-side libraries and pinned staging buffers.
PROCESS_RAM_OVERHEAD = {"cuda": 900 * MiB, "rocm": 900 * MiB, "metal": 400 * MiB, "cpu": 400 * MiB}


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp puts the weights: the last `gpu_layers` repeating layers and maybe the output
    on the GPU, except the expert tensors of the first `cpu_moe_layers` layers, kept in CPU memory
    (`--n-cpu-moe N`: `tensor_buft_overrides` of `blk.I.ffn_(up|down|gate)_exps` for I < N)."""

    gpu_layers: int
    output_on_gpu: bool
    cpu_moe_layers: int = 0

    @classmethod
    def from_n_gpu_layers(
        cls, n_gpu_layers: int, n_layers: int, *, legacy: bool = False, n_cpu_moe: int = 0
    ) -> Placement:
        ngl = max(0, min(n_gpu_layers, n_layers + 1))
        moe = max(0, min(n_cpu_moe, n_layers))
        if legacy:
            return cls(min(ngl, n_layers), ngl > n_layers, moe)
        return cls(max(0, ngl - 1), ngl >= 1, moe)

    def is_full(self, n_layers: int) -> bool:
        """Every weight on the GPU: all layers, the output, and no experts held back."""
        return self.gpu_layers >= n_layers and self.output_on_gpu and self.cpu_moe_layers == 0

    def first_gpu_layer(self, n_layers: int) -> int:
        return n_layers - min(self.gpu_layers, n_layers)

    def experts_on_gpu(self, layer: int, n_layers: int) -> bool:
        return layer >= max(self.first_gpu_layer(n_layers), self.cpu_moe_layers)


@dataclass(frozen=True)
class DeviceMemory:
    """One device's share: weights, KV cache, compute buffer (as llama.cpp logs them) + overhead."""

    weights: int = 0
    kv: int = 0
    compute: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.overhead

    def to_dict(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "kv": self.kv,
            "compute": self.compute,
            "overhead": self.overhead,
            "total": self.total,
        }


@dataclass(frozen=True)
class MemoryEstimate:
    gpu: DeviceMemory
    cpu: DeviceMemory
    unified: bool  # Metal: the GPU's share lives in the same RAM

    @property
    def vram_bytes(self) -> int:
        return self.gpu.total

    @property
    def ram_bytes(self) -> int:
        return self.cpu.total + (self.gpu.total if self.unified else 0)


def kv_cache_bytes(shape: ModelShape, n_ctx: int, layers: int, kv_type: str = "f16") -> int:
    per_layer = 2 * n_ctx * shape.n_head_kv * shape.head_dim * kv_bytes_per_element(kv_type)
    return round(per_layer * layers)


def estimate_memory(
    shape: ModelShape,
    placement: Placement,
    *,
    backend: str,
    n_ctx: int,
    n_ubatch: int = 512,
    kv_type: str = "f16",
    flash_attn: bool = False,
) -> MemoryEstimate:
    """Device and host memory of one configuration (pure arithmetic)."""
    if backend == "cpu":
        placement = Placement(0, False)
    n = shape.n_layers
    first_gpu = placement.first_gpu_layer(n)
    gpu_layers = n - first_gpu
    gpu_expert_layers = [i for i in range(first_gpu, n) if placement.experts_on_gpu(i, n)]
    held_back = [i for i in range(first_gpu, n) if not placement.experts_on_gpu(i, n)]
    held_back_bytes = sum(shape.expert_bytes(i) for i in held_back)
    gpu_layer_bytes = sum(shape.layer_bytes[first_gpu:]) - held_back_bytes
    cpu_layer_bytes = sum(shape.layer_bytes[:first_gpu]) + held_back_bytes
    uses_gpu = gpu_layers > 0 or placement.output_on_gpu

    def compute(part: GraphPart) -> int:
        return compute_buffer_bytes(
            shape, part, n_ctx=n_ctx, n_ubatch=n_ubatch, flash_attn=flash_attn
        )

    gpu = DeviceMemory()
    if uses_gpu:
        copy = op_offload_copy(
            shape, backend, n_ubatch, range(first_gpu), list(range(first_gpu)) + held_back
        )
        gpu_part = GraphPart(
            attention_layers=gpu_layers,
            expert_layers=len(gpu_expert_layers),
            attention_after_ffn=len(gpu_expert_layers) >= 2,
            output=placement.output_on_gpu,
            host_weight_copy=copy if (first_gpu or held_back) else 0,
        )
        gpu = DeviceMemory(
            weights=gpu_layer_bytes + (shape.output_bytes if placement.output_on_gpu else 0),
            kv=kv_cache_bytes(shape, n_ctx, gpu_layers, kv_type),
            compute=compute(gpu_part),
            overhead=BACKEND_DEVICE_OVERHEAD.get(backend, 0),
        )
    cpu_part = GraphPart(
        attention_layers=first_gpu,
        expert_layers=first_gpu + len(held_back),
        attention_after_ffn=first_gpu >= 1 and n >= 2,
        output=not placement.output_on_gpu,
        token_embd=True,
    )
    cpu = DeviceMemory(
        weights=shape.token_embd_bytes
        + shape.other_bytes
        + cpu_layer_bytes
        + (0 if placement.output_on_gpu else shape.output_bytes),
        kv=kv_cache_bytes(shape, n_ctx, first_gpu, kv_type),
        compute=compute(cpu_part)
        + shape.n_vocab * 4,  # the host output buffer: logits of the one token sampled
        overhead=PROCESS_RAM_OVERHEAD.get(backend, PROCESS_RAM_OVERHEAD["cpu"]),
    )
    return MemoryEstimate(gpu=gpu, cpu=cpu, unified=backend == "metal")


# The conversation length at which placements are compared (KV cache read per token).
REFERENCE_CONTEXT = 2048


def cpu_bytes_per_token(
    shape: ModelShape, placement: Placement, n_ctx: int = REFERENCE_CONTEXT, kv_type: str = "f16"
) -> int:
    """Bytes the CPU reads from RAM for one generated token under this placement.

    Decoding is memory-bound, so this is what a split costs: every weight the CPU holds is read
    once per token except the experts, of which only n_expert_used of n_expert are (Mixtral: 2 of
    8); a CPU layer also reads its KV cache, counted for n_ctx tokens of conversation (plans use
    REFERENCE_CONTEXT, so a larger context does not make a plan look worse). The token embedding
    is one row, negligible. A byte of attention on the GPU saves a byte of CPU reads; a byte of
    experts saves a quarter: why MoE placement puts attention and KV first.
    """
    n = shape.n_layers
    first_gpu = placement.first_gpu_layer(n)
    used = max(shape.n_expert_used, 1) / max(shape.n_expert, 1) if shape.is_moe else 1.0
    total = 0.0
    for layer in range(n):
        experts = shape.expert_bytes(layer)
        if layer < first_gpu:
            total += shape.layer_bytes[layer] - experts + experts * used
            total += kv_cache_bytes(shape, n_ctx, 1, kv_type)
        elif not placement.experts_on_gpu(layer, n):
            total += experts * used
    if not placement.output_on_gpu:
        total += shape.output_bytes
    return round(total)


def device_breakdown(
    shape: ModelShape,
    *,
    n_gpu_layers: int,
    n_cpu_moe: int,
    n_ctx: int,
    backend: str = "rpc",
    n_ubatch: int = 512,
    kv_type: str = "f16",
    flash_attn: bool = False,
) -> DeviceMemory:
    """What llama.cpp allocates on the one GPU-typed device for this placement.

    `weights` is the device's model buffer, `kv` its KV cache buffer, `compute` its compute
    buffer: the three sizes llama.cpp logs per device (`<dev> model buffer size`, `<dev> KV buffer
    size`, `<dev> compute buffer size`), so a test can set them side by side. `overhead` is the
    runtime's own memory that llama.cpp does not log (0 on an RPC device). `n_gpu_layers` counts as
    llama.cpp counts it (the output layer is the last one); `n_cpu_moe` keeps the experts of the
    first N layers in CPU memory. Arguments must match the load: n_ubatch (llama-cpp-python's
    default 512), the KV cache type and flash attention.
    """
    placement = Placement.from_n_gpu_layers(n_gpu_layers, shape.n_layers, n_cpu_moe=n_cpu_moe)
    estimate = estimate_memory(
        shape,
        placement,
        backend=backend,
        n_ctx=n_ctx,
        n_ubatch=n_ubatch,
        kv_type=kv_type,
        flash_attn=flash_attn,
    )
    return estimate.gpu


# -- sizes as people write them ---------------------------------------------------------------

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """'8GiB' -> 8 x 2**30, '24GB' -> 24 x 10**9, '512MiB', '1.5GiB'. ValueError otherwise."""
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = cleaned[len(number) :]
    if unit not in _UNITS or not number:
        raise ValueError(f"'{text}' is not a size (try 8GiB, 24GB or 512MiB)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"'{text}' is not a size (try 8GiB, 24GB or 512MiB)") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"'{text}' is not a size (try 8GiB, 24GB or 512MiB)")
    return int(value * _UNITS[unit])
