"""How much GPU memory and RAM llama.cpp needs for a model, a layer split and a context size.

The model follows llama.cpp's own placement and allocation rules (src/llama-model.cpp,
src/llama-kv-cache.cpp, ggml-alloc), not guesses:

- Token embeddings always stay on the CPU ("very little benefit to offloading the input layer").
- Placement of `n_gpu_layers` (current llama.cpp, and so llama-cpp-python 0.3.x): the output layer
  counts as layer number n_layer, `i_gpu_start = n_layer + 1 - n_gpu_layers`, so n_gpu_layers = k
  puts the output layer and the last k-1 repeating layers on the GPU; n_layer + 1 puts everything.
  Until late 2025 (and in February 2024, when the README's figures were measured)
  `i_gpu_start = n_layer - n_gpu_layers`: k repeating layers, the output only when k > n_layer.
  `Placement.from_n_gpu_layers(..., legacy=True)` reproduces that for the published figures.
- KV cache: per layer 2 x n_ctx x n_head_kv x head_dim x bytes(type), kept with its layer.
- Compute buffers (ggml-alloc's peak over one ubatch of n_ubatch tokens): the attention scores
  n_ctx x n_ubatch x n_head x 4 bytes (soft_max runs in place; flash attention never builds them),
  the MoE up/gate activations 2 x n_ff x n_expert_used x n_ubatch x 4, the logits
  n_vocab x n_ubatch x 4 on the device that holds the output layer, plus a few n_embd x n_ubatch
  activations. Each backend holding part of the graph reserves its own peak.
- A fixed per-backend overhead on the device (CUDA context, cuBLAS workspace and the CUDA memory
  pool's dequantization buffers; Metal's command buffers) and in the process (runtime, tokenizer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from huozi_local.core.catalog import QUANT_BITS_PER_WEIGHT

if TYPE_CHECKING:
    from huozi_local.core.catalog import ModelFamily, QuantFile
    from huozi_local.core.gguf.header import GGUFFile

MiB = 1024**2
GiB = 1024**3

# Device memory a backend takes before any tensor: measured CUDA contexts with cuBLAS loaded
# take 300-500 MiB on nvidia-smi, and the CUDA pool keeps the f16 dequantization buffer of the
# largest matrix it multiplied in a batch (a 14336 x 4096 expert: 112 MiB).
BACKEND_DEVICE_OVERHEAD = {"cuda": 480 * MiB, "rocm": 560 * MiB, "metal": 96 * MiB, "cpu": 0}
# Host memory of the process itself: Python, the app, llama.cpp's vocabulary and mmap bookkeeping;
# GPU runtimes add their host-side libraries and pinned staging buffers.
PROCESS_RAM_OVERHEAD = {"cuda": 900 * MiB, "rocm": 900 * MiB, "metal": 400 * MiB, "cpu": 400 * MiB}

# Bytes per weight of the ggml types a quant recipe uses (block size and bytes per block).
TYPE_BYTES_PER_WEIGHT = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q6_k": 210 / 256,
    "q5_k": 176 / 256,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_k": 144 / 256,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "q3_k": 110 / 256,
    "q2_k": 84 / 256,
}

# llama.cpp's quantization recipes (llama_tensor_get_type, February 2024) for an 8-expert model:
# tensor group -> ggml type. Unlisted groups get the quant's base type.
RECIPES: dict[str, dict[str, str]] = {
    "q2_k": {
        "base": "q2_k",
        "output": "q6_k",
        "attn_v": "q8_0",  # "for the 8-expert model, bumping this to Q8_0 trades just ~128MB"
        "attn_k": "q8_0",
        "attn_output": "q5_k",
        "ffn_down": "q3_k",
    },
    "q4_0": {"base": "q4_0", "output": "q6_k", "attn_v": "q8_0", "attn_k": "q8_0"},
}

KV_TYPES = ("f16", "q8_0")


def kv_bytes_per_element(kv_type: str) -> float:
    try:
        return TYPE_BYTES_PER_WEIGHT[kv_type]
    except KeyError:
        raise ValueError(f"unknown KV cache type {kv_type!r}") from None


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about one model file."""

    name: str
    n_layers: int
    layer_bytes: tuple[int, ...]
    non_layer_bytes: Mapping[str, int]
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    context_length: int
    file_bytes: int = 0
    estimated: bool = field(default=False)

    @property
    def token_embd_bytes(self) -> int:
        return self.non_layer_bytes.get("token_embd.weight", 0)

    @property
    def output_bytes(self) -> int:
        """The output layer: output.weight (or a copy of tied embeddings) and its norm."""
        output = self.non_layer_bytes.get("output.weight")
        if output is None:
            output = self.token_embd_bytes  # tied embeddings: llama.cpp duplicates them
        return output + self.non_layer_bytes.get("output_norm.weight", 0)

    @property
    def other_bytes(self) -> int:
        """Non-layer tensors that are neither embeddings nor the output (rope factors, ...)."""
        named = ("token_embd.weight", "output.weight", "output_norm.weight")
        return sum(v for k, v in self.non_layer_bytes.items() if k not in named)

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + sum(self.non_layer_bytes.values())

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelShape:
        return cls(
            name=gguf.name,
            n_layers=gguf.n_layers,
            layer_bytes=tuple(gguf.layer_bytes()),
            non_layer_bytes=dict(gguf.non_layer_bytes()),
            n_embd=gguf.n_embd,
            n_head=gguf.n_head,
            n_head_kv=gguf.n_head_kv,
            head_dim=gguf.head_dim,
            n_vocab=gguf.vocab_size,
            n_ff=gguf.n_ff,
            n_expert=gguf.n_expert,
            n_expert_used=gguf.n_expert_used,
            context_length=gguf.context_length,
            file_bytes=gguf.file_size,
        )

    @classmethod
    def from_manifest(cls, family: ModelFamily, quant: QuantFile) -> ModelShape:
        """Tensor sizes from the architecture and the quant's recipe, scaled to the file size."""
        arch = family.architecture
        recipe = RECIPES.get(quant.quant, {})
        base_bpw = TYPE_BYTES_PER_WEIGHT.get(
            recipe.get("base", quant.quant), QUANT_BITS_PER_WEIGHT.get(quant.quant, 4.5) / 8
        )

        def size(group: str, n_weights: int) -> float:
            kind = recipe.get(group)
            if kind is None and group == "output":
                kind = "q6_k" if base_bpw < TYPE_BYTES_PER_WEIGHT["q6_k"] else None
            return n_weights * (TYPE_BYTES_PER_WEIGHT[kind] if kind else base_bpw)

        e, hd = arch.n_embd, arch.head_dim
        experts = max(arch.n_expert, 1)
        layer = (
            size("attn_q", e * arch.n_head * hd)
            + size("attn_k", e * arch.n_head_kv * hd)
            + size("attn_v", e * arch.n_head_kv * hd)
            + size("attn_output", arch.n_head * hd * e)
            + size("ffn_gate", experts * e * arch.n_ff)
            + size("ffn_up", experts * e * arch.n_ff)
            + size("ffn_down", experts * e * arch.n_ff)
            + 4 * (2 * e + (e * arch.n_expert if arch.n_expert else 0))  # norms, router (f32)
        )
        non_layer = {
            "token_embd.weight": size("token_embd", arch.n_vocab * e),
            "output.weight": size("output", arch.n_vocab * e),
            "output_norm.weight": 4.0 * e,
        }
        nominal = layer * arch.n_layers + sum(non_layer.values())
        scale = quant.size_bytes / nominal if quant.size_bytes > 0 else 1.0
        return cls(
            name=f"{family.name}:{quant.quant}",
            n_layers=arch.n_layers,
            layer_bytes=tuple(round(layer * scale) for _ in range(arch.n_layers)),
            non_layer_bytes={k: round(v * scale) for k, v in non_layer.items()},
            n_embd=e,
            n_head=arch.n_head,
            n_head_kv=arch.n_head_kv,
            head_dim=hd,
            n_vocab=arch.n_vocab,
            n_ff=arch.n_ff,
            n_expert=arch.n_expert,
            n_expert_used=arch.n_expert_used,
            context_length=arch.context_length,
            file_bytes=quant.size_bytes,
            estimated=True,
        )


@dataclass(frozen=True)
class Placement:
    """Which repeating layers (the last `gpu_layers`) and whether the output sit on the GPU."""

    gpu_layers: int
    output_on_gpu: bool

    @classmethod
    def from_n_gpu_layers(
        cls, n_gpu_layers: int, n_layers: int, *, legacy: bool = False
    ) -> Placement:
        ngl = max(0, min(n_gpu_layers, n_layers + 1))
        if legacy:
            return cls(min(ngl, n_layers), ngl > n_layers)
        return cls(max(0, ngl - 1), ngl >= 1)

    def is_full(self, n_layers: int) -> bool:
        return self.gpu_layers >= n_layers and self.output_on_gpu


@dataclass(frozen=True)
class DeviceMemory:
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


def compute_buffer_bytes(
    shape: ModelShape,
    n_ctx: int,
    n_ubatch: int,
    *,
    flash_attn: bool,
    has_layers: bool,
    has_output: bool,
) -> int:
    """ggml-alloc's peak for the part of the graph one backend runs."""
    tokens = max(1, min(n_ubatch, n_ctx))
    activation = shape.n_embd * tokens * 4
    peak = 2 * activation  # inputs and embeddings (get_rows) live on every backend
    if has_layers:
        if flash_attn:
            attention = n_ctx * tokens * 2 + 4 * activation  # the f16 mask; no score matrix
        else:
            # scores (soft_max in place) plus the f32 KQ mask
            attention = n_ctx * tokens * (shape.n_head + 1) * 4 + 4 * activation
        ffn = 2 * shape.n_ff * max(shape.n_expert_used, 1) * tokens * 4 + 2 * activation
        peak = max(peak, attention, ffn)
    if has_output:
        peak = max(peak, shape.n_vocab * tokens * 4 + activation)
    return peak


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
    gpu_layers = min(placement.gpu_layers, shape.n_layers)
    cpu_layers = shape.n_layers - gpu_layers
    gpu_layer_bytes = sum(shape.layer_bytes[shape.n_layers - gpu_layers :]) if gpu_layers else 0
    cpu_layer_bytes = sum(shape.layer_bytes[:cpu_layers])
    uses_gpu = gpu_layers > 0 or placement.output_on_gpu
    gpu = DeviceMemory()
    if uses_gpu:
        gpu = DeviceMemory(
            weights=gpu_layer_bytes + (shape.output_bytes if placement.output_on_gpu else 0),
            kv=kv_cache_bytes(shape, n_ctx, gpu_layers, kv_type),
            compute=compute_buffer_bytes(
                shape,
                n_ctx,
                n_ubatch,
                flash_attn=flash_attn,
                has_layers=gpu_layers > 0,
                has_output=placement.output_on_gpu,
            ),
            overhead=BACKEND_DEVICE_OVERHEAD.get(backend, 0),
        )
    cpu = DeviceMemory(
        weights=shape.token_embd_bytes
        + shape.other_bytes
        + cpu_layer_bytes
        + (0 if placement.output_on_gpu else shape.output_bytes),
        kv=kv_cache_bytes(shape, n_ctx, cpu_layers, kv_type),
        compute=compute_buffer_bytes(
            shape,
            n_ctx,
            n_ubatch,
            flash_attn=flash_attn,
            has_layers=cpu_layers > 0,
            has_output=not placement.output_on_gpu,
        )
        + shape.n_vocab * 4,  # the host output buffer: logits of the one token sampled
        overhead=PROCESS_RAM_OVERHEAD.get(backend, PROCESS_RAM_OVERHEAD["cpu"]),
    )
    return MemoryEstimate(gpu=gpu, cpu=cpu, unified=backend == "metal")


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


def format_bytes(n: int) -> str:
    """Binary units, as memory is sold and as nvidia-smi counts: '17.3 GiB'."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n} B"
