"""What the memory model knows about one model file: its tensor sizes by layer and its dimensions.

A shape comes from a real GGUF header (exact bytes) or, for what-if plans before a download, from
the family's architecture and llama.cpp's quantization recipe scaled to the hub's file size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from huozi_local.core.catalog import QUANT_BITS_PER_WEIGHT

if TYPE_CHECKING:
    from huozi_local.core.catalog import ModelFamily, QuantFile
    from huozi_local.core.gguf.header import GGUFFile

MiB = 1024**2
GiB = 1024**3

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
    # Per layer, the bytes of its MoE expert tensors (part of layer_bytes); empty for dense models.
    layer_expert_bytes: tuple[int, ...] = ()

    def expert_bytes(self, layer: int) -> int:
        """Bytes of layer `layer`'s expert tensors (0 for a dense model)."""
        return self.layer_expert_bytes[layer] if layer < len(self.layer_expert_bytes) else 0

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 1 and any(self.layer_expert_bytes)

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
            layer_expert_bytes=tuple(gguf.layer_expert_bytes()),
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
        ffn = (
            size("ffn_gate", experts * e * arch.n_ff)
            + size("ffn_up", experts * e * arch.n_ff)
            + size("ffn_down", experts * e * arch.n_ff)
        )
        layer = (
            size("attn_q", e * arch.n_head * hd)
            + size("attn_k", e * arch.n_head_kv * hd)
            + size("attn_v", e * arch.n_head_kv * hd)
            + size("attn_output", arch.n_head * hd * e)
            + ffn
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
            layer_expert_bytes=tuple(
                round(ffn * scale) if arch.n_expert > 1 else 0 for _ in range(arch.n_layers)
            ),
        )
