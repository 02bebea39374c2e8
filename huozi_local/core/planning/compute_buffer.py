"""The compute buffer llama.cpp reserves on each backend: a formula from its graph, measured.

llama.cpp builds the graph of one ubatch (T = min(n_ubatch, n_ctx) tokens, every token an output
at reserve time), splits it by backend and lets ggml-alloc place every intermediate tensor in one
buffer per backend; the buffer is that backend's peak of live tensors. The peak is one of three
moments of the graph (src/models/llama.cpp, llama-graph.cpp build_attn / build_moe_ffn), all f32,
E = n_embd, kv = n_head_kv x head_dim:

- attention: the scores KQ (n_ctx x T x n_head; soft_max runs in place; flash attention never
  builds them) next to Q, K, V of the ubatch, the attention output, its projection and the
  residual: T x (4E + 2kv) floats. The KQ mask (n_ctx x T, f16 with flash attention, else f32)
  is a graph input that stays alive on each backend that runs attention.
- MoE FFN: the up and gate activations of the n_expert_used chosen experts and their SwiGLU
  product, 3 x n_ff x n_expert_used x T, plus the residual and the normed input, 2E x T. When a
  later layer's attention runs on the same backend, the mask and one more E x T are alive too.
- output: the logits n_vocab x T next to the final norm (2E x T); a backend that holds the
  output and no layer also keeps the copies of its inputs (4E x T).
- The CPU backend, which holds the token embeddings, also keeps their get_rows result (E x T).

Measured (benchmarks/bench_compute_buffer.py) on a real-shape huozi3 slice, CPU and an RPC device,
n_ctx 512-8192, n_ubatch 64-512, flash attention on and off, full offload, layer split, output
only and MoE placement: the formula is within about 2% of llama.cpp's allocations; the rest is
ggml-alloc's fragmentation, which moves by a few MiB with the order tensors are freed.

On CUDA (and ROCm), llama.cpp offloads a matrix multiplication whose weights sit in host memory
to the GPU when the batch has >= 32 tokens ("op offload", how a split still gets GPU prompt
speed): the scheduler copies the weight into the GPU's compute buffer, one split per weight
(ggml-backend.cpp, "the memory of the previously offloaded weights can be reused"). Reserving at
n_ubatch 512 counts it, so any expert or layer left in RAM adds its largest weight tensor to the
GPU's compute buffer. That part comes from reading the source; no GPU was available to measure
it (benchmarks/bench_gpu_placement.py does, on an NVIDIA machine).
"""

from __future__ import annotations

from dataclasses import dataclass

from huozi_local.core.planning.model_shape import ModelShape

F32 = 4
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda: GGML_OP_OFFLOAD_MIN_BATCH's default
# Backends whose scheduler offloads host-weight matmuls into their compute buffer.
OFFLOADING_BACKENDS = frozenset({"cuda", "rocm"})


@dataclass(frozen=True)
class GraphPart:
    """What of the graph one backend runs (the scheduler puts an op where its weights are)."""

    attention_layers: int = 0  # layers whose attention (and KV cache) this backend holds
    expert_layers: int = 0  # layers whose MoE experts (or dense FFN) it holds
    # the KQ mask and a residual are still alive during one of its FFNs (on a GPU: another of
    # its layers follows; on the CPU: it runs attention and later layers need the mask)
    attention_after_ffn: bool = False
    output: bool = False
    token_embd: bool = False  # the CPU: get_rows of the embeddings happens here
    host_weight_copy: int = 0  # bytes of the largest host weight copied in by op offload


def compute_buffer_bytes(
    shape: ModelShape, part: GraphPart, *, n_ctx: int, n_ubatch: int, flash_attn: bool
) -> int:
    """ggml-alloc's peak on one backend for the part of the graph it runs."""
    tokens = max(1, min(n_ubatch, n_ctx))
    e = shape.n_embd
    kv = shape.n_head_kv * shape.head_dim
    row = tokens * F32  # bytes of one float per token
    mask = n_ctx * tokens * (2 if flash_attn else F32)
    embd = e * row if part.token_embd else 0
    peak = 0
    if part.token_embd:  # the graph inputs live here until each backend has its copy
        peak = embd + e * row + mask + (0 if flash_attn else 2 * kv * row)
    if part.attention_layers:
        scores = 0 if flash_attn else n_ctx * tokens * shape.n_head * F32
        peak = max(peak, scores + (4 * e + 2 * kv) * row + mask + embd)
    if part.expert_layers or part.host_weight_copy:
        used = max(shape.n_expert_used, 1)
        ffn = (3 * shape.n_ff * used + 2 * e) * row + part.host_weight_copy
        if part.attention_after_ffn:
            ffn += mask + e * row + embd
        peak = max(peak, ffn)
    if part.output:
        inputs = 2 * e if part.attention_layers or part.expert_layers else 4 * e
        peak = max(peak, (shape.n_vocab + inputs) * row)
    return peak


def largest_host_weight(shape: ModelShape, cpu_layers: range, cpu_expert_layers: list[int]) -> int:
    """The biggest single weight matrix a GPU would copy in to run a host-held matmul."""
    n_matrices = 3  # gate, up, down: merged experts are one tensor each
    biggest = max((shape.expert_bytes(i) // n_matrices for i in cpu_expert_layers), default=0)
    for i in cpu_layers:
        dense = shape.layer_bytes[i] - shape.expert_bytes(i)
        # attention (q, k, v, o) and, for dense models, the FFN: q and o are the largest, a
        # quarter of the non-expert bytes is a fair bound for one matrix
        biggest = max(biggest, dense // 4 if shape.is_moe else dense // 3)
    return biggest


def op_offload_copy(
    shape: ModelShape, backend: str, n_ubatch: int, cpu_layers: range, cpu_expert_layers: list[int]
) -> int:
    """Bytes op offload adds to the GPU's compute buffer (0 where the backend does not do it)."""
    if backend not in OFFLOADING_BACKENDS or n_ubatch < OP_OFFLOAD_MIN_BATCH:
        return 0
    return largest_host_weight(shape, cpu_layers, cpu_expert_layers)
