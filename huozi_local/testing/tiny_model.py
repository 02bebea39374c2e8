"""Tiny GGUF models that look like the official huozi3 files in every way that matters but size.

Shape: llama architecture, Mixtral-style MoE (8 experts, 2 used), 4 layers, embedding 256, FFN
512 (multiples of 256 so q2_k and q4_0 quantize every matrix without fallback), 8 heads and 2 KV
heads, RoPE theta 1e6, a 32768 training context. Vocabulary: the full huozi layout
(`vocab.build_vocabulary`). Metadata: as the February-2024 files have it (EOS 2, no chat
template, utterance tokens USER_DEFINED).

Layouts: `merged` (today's `blk.N.ffn_gate_exps.weight`, 3-D) and `split` (the legacy
`blk.N.ffn_gate.E.weight`, one tensor per expert, as the official files are). Quantized split files
are made by slicing the quantized merged tensors, which is exactly how a legacy file relates to a
merged one: the same rows, one expert after another.

Rigs make a random model predictable without changing its shape. A few residual dimensions are
reserved: every layer writes zero into them, so at every position they hold the current token's
embedding, and the output layer reads only them. That turns the model into a deterministic
next-token table:
- `chat`: after any token it says 你好，龘世界！ (龘 as three byte tokens) and then emits
  `<|endofutterance|>` (57001);
- `loop`: the same text over and over, never stopping (for cancel, length and overflow tests).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from huozi_local.core import huozi
from huozi_local.testing.vocab import Vocabulary, build_vocabulary

Layout = Literal["merged", "split"]
Quant = Literal["f32", "q4_0", "q2_k"]
Rig = Literal["none", "chat", "loop"]

RIG_TEXT = "你好，龘世界！"
FACTORY_VERSION = "2"


@dataclass(frozen=True)
class TinyShape:
    n_layer: int = 4
    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 8
    n_head_kv: int = 2
    n_expert: int = 8
    n_expert_used: int = 2
    context_length: int = 32768
    rope_freq_base: float = 1_000_000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TinySpec:
    layout: Layout = "merged"
    quant: Quant = "f32"
    rig: Rig = "none"
    seed: int = 1234

    @property
    def filename(self) -> str:
        return (
            f"tiny-huozi-v{FACTORY_VERSION}-{self.layout}-{self.quant}-{self.rig}-s{self.seed}.gguf"
        )


def rig_chain(vocab: Vocabulary) -> list[int]:
    """Token ids of RIG_TEXT as the rigged model emits them, one piece per token."""
    index = {tok: i for i, tok in enumerate(vocab.tokens)}
    chain: list[int] = []
    for char in RIG_TEXT:
        if char in index:
            chain.append(index[char])
        else:
            chain += [index[f"<0x{b:02X}>"] for b in char.encode("utf-8")]
    if len(set(chain)) != len(chain):
        raise RuntimeError("rig chain tokens must be distinct")
    return chain


def _weights(shape: TinyShape, vocab: Vocabulary, rig: Rig, seed: int) -> dict[str, np.ndarray]:
    """All tensors in numpy order (the reverse of ggml's ne), merged-expert layout."""
    rng = np.random.default_rng(seed)
    n_vocab = len(vocab.tokens)
    e, d, f = shape.n_expert, shape.n_embd, shape.n_ff
    kv = shape.n_head_kv * shape.head_dim

    def normal(*dims: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * std).astype(np.float32)

    w: dict[str, np.ndarray] = {"token_embd.weight": normal(n_vocab, d, std=0.5)}
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(d, dtype=np.float32)
        w[p + "attn_q.weight"] = normal(d, d, std=0.1)
        w[p + "attn_k.weight"] = normal(kv, d, std=0.1)
        w[p + "attn_v.weight"] = normal(kv, d, std=0.1)
        w[p + "attn_output.weight"] = normal(d, d, std=0.1)
        w[p + "ffn_norm.weight"] = np.ones(d, dtype=np.float32)
        w[p + "ffn_gate_inp.weight"] = normal(e, d, std=0.5)
        w[p + "ffn_gate_exps.weight"] = normal(e, f, d, std=0.1)
        w[p + "ffn_up_exps.weight"] = normal(e, f, d, std=0.1)
        w[p + "ffn_down_exps.weight"] = normal(e, d, f, std=0.1)
    w["output_norm.weight"] = np.ones(d, dtype=np.float32)
    w["output.weight"] = normal(n_vocab, d, std=0.5)
    if rig != "none":
        _rig(w, shape, vocab, rig)
    return w


def _rig(w: dict[str, np.ndarray], shape: TinyShape, vocab: Vocabulary, rig: Rig) -> None:
    chain = rig_chain(vocab)
    reserved = len(chain) + 1  # dim 0: "any token"; dim 1+i: "the i-th chain token"
    embd, out = w["token_embd.weight"], w["output.weight"]
    embd[:, :reserved] = 0.0
    embd[:, 0] = 4.0
    for i, token in enumerate(chain):
        embd[token, 1 + i] = 12.0
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        w[p + "attn_output.weight"][:reserved, :] = 0.0
        w[p + "ffn_down_exps.weight"][:, :reserved, :] = 0.0
    out[:, :reserved] = 0.0
    out[:, reserved:] *= 0.001  # the output reads (almost) only the reserved dimensions
    # Large enough that sampling at temperature 0.2 with a repeat penalty never strays: the margin
    # over every other logit is in the hundreds, whatever the random layers add to the norm.
    out[chain[0], 0] = 60.0
    follow = [*chain[1:], huozi.END_OF_UTTERANCE_ID if rig == "chat" else chain[0]]
    for i, nxt in enumerate(follow):
        out[nxt, 1 + i] = 120.0


def _write_f32(path: Path, spec: TinySpec, shape: TinyShape, vocab: Vocabulary) -> None:
    import gguf

    weights = _weights(shape, vocab, spec.rig, spec.seed)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("huozi3-tiny")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_freq_base(shape.rope_freq_base)
    writer.add_expert_count(shape.n_expert)
    writer.add_expert_used_count(shape.n_expert_used)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    writer.add_bos_token_id(huozi.BOS_ID)
    writer.add_eos_token_id(huozi.EOS_ID)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    for name, array in _ordered(weights, spec.layout, shape):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_EXPERT_KINDS = ("gate", "down", "up")


def _ordered(
    weights: dict[str, np.ndarray], layout: Layout, shape: TinyShape
) -> list[tuple[str, np.ndarray]]:
    """Tensors in the order the legacy converter wrote them; split experts when asked."""
    items: list[tuple[str, np.ndarray]] = [("token_embd.weight", weights["token_embd.weight"])]
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"):
            items.append((f"{p}{part}.weight", weights[f"{p}{part}.weight"]))
        items.append((f"{p}ffn_gate_inp.weight", weights[f"{p}ffn_gate_inp.weight"]))
        for kind in _EXPERT_KINDS:
            merged = weights[f"{p}ffn_{kind}_exps.weight"]
            if layout == "merged":
                items.append((f"{p}ffn_{kind}_exps.weight", merged))
            else:
                items += [(f"{p}ffn_{kind}.{x}.weight", merged[x]) for x in range(shape.n_expert)]
    items.append(("output_norm.weight", weights["output_norm.weight"]))
    items.append(("output.weight", weights["output.weight"]))
    return items


def quantize(src: Path, dst: Path, quant: Quant) -> None:
    """Quantize with llama.cpp itself (through llama-cpp-python), as a user's tools would."""
    import llama_cpp

    ftype = {
        "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "q2_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
    }[quant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = max(1, min(4, os.cpu_count() or 1))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc}")


def split_experts(src: Path, dst: Path) -> None:
    """Rewrite a merged file in the legacy layout, slicing each 3-D expert tensor's raw bytes."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    copy_fields(reader, writer, skip=frozenset())
    for tensor in reader.tensors:
        ne = [int(n) for n in tensor.shape]
        qtype = gguf.GGMLQuantizationType(int(tensor.tensor_type))
        raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
        if "_exps." not in tensor.name:
            writer.add_tensor(tensor.name, raw, raw_shape=_byte_shape(ne, qtype), raw_dtype=qtype)
            continue
        n_expert = ne[2]
        per_expert = raw.size // n_expert
        stem, _, _ = tensor.name.partition("_exps.")
        for x in range(n_expert):
            part = raw[x * per_expert : (x + 1) * per_expert]
            writer.add_tensor(
                f"{stem}.{x}.weight", part, raw_shape=_byte_shape(ne[:2], qtype), raw_dtype=qtype
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _byte_shape(ne: list[int], qtype: object) -> list[int]:
    """numpy-order shape in bytes, which GGUFWriter converts back to elements for raw tensors."""
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows = list(reversed(ne))
    rows[-1] = rows[-1] // block_size * type_size
    return rows


def copy_fields(reader: object, writer: object, skip: frozenset[str]) -> None:
    """Copy every metadata field from a GGUFReader to a GGUFWriter, except those in `skip`."""
    import gguf

    for field in reader.fields.values():  # type: ignore[attr-defined]
        name = field.name
        if name.startswith("GGUF.") or name == "general.architecture" or name in skip:
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, vtype, sub_type=field.types[-1])  # type: ignore[attr-defined]
        else:
            writer.add_key_value(name, value, vtype)  # type: ignore[attr-defined]


class TinyModels:
    """Builds tiny models on demand into one folder and reuses them (deterministic per spec)."""

    def __init__(self, root: Path, shape: TinyShape | None = None) -> None:
        self.root = Path(root)
        self.shape = shape or TinyShape()
        self._vocab: Vocabulary | None = None

    @property
    def vocab(self) -> Vocabulary:
        if self._vocab is None:
            self._vocab = build_vocabulary()
        return self._vocab

    def get(self, layout: Layout = "merged", quant: Quant = "f32", rig: Rig = "none") -> Path:
        spec = TinySpec(layout=layout, quant=quant, rig=rig)
        path = self.root / spec.filename
        if path.exists():
            return path
        self.root.mkdir(parents=True, exist_ok=True)
        # A unique temporary name: parallel test processes may build the same model at once.
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        if quant == "f32":
            _write_f32(tmp, spec, self.shape, self.vocab)
        elif layout == "merged":
            quantize(self.get("merged", "f32", rig), tmp, quant)
        else:
            split_experts(self.get("merged", quant, rig), tmp)
        os.replace(tmp, path)
        return path

    def all_standard(self) -> dict[str, Path]:
        """Every layout x quant of the plain model: what the foundation issue promises."""
        out: dict[str, Path] = {}
        for quant in ("f32", "q4_0", "q2_k"):
            for layout in ("merged", "split"):
                out[f"{layout}-{quant}"] = self.get(layout, quant)
        return out


def write_plain_gguf(path: Path, n_bytes: int = 3 << 20, seed: int = 0) -> Path:
    """A valid GGUF that needs no repair (one random tensor of about n_bytes), for moving bytes:
    downloads and their benchmark, where the bytes on disk must be exactly the bytes served.
    It has a token list (a few tokens) because import refuses a file with none."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>", "\u2581plain"])
    data = np.random.default_rng(seed).bytes(n_bytes // 1024 * 1024)
    writer.add_tensor("token_embd.weight", np.frombuffer(data, dtype=np.float32).reshape(-1, 256))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def copy_model(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst
