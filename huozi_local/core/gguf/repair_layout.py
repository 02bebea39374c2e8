"""Where every byte of a repaired file comes from: the new header and the source's tensor data.

The repair is a layout before it is a copy: a new header (merged expert tensors, the turn-ending
metadata, the provenance keys) and, for each byte range of the source's tensor data, where it
lands in the new file. `repair_gguf` copies a file on disk along it; a download of an official
legacy file writes each range it receives straight to its place along it, so the repair costs
no second pass and no second copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huozi_local import __version__
from huozi_local.core import huozi
from huozi_local.core.errors import GGUFError
from huozi_local.core.gguf.byte_format import (
    MERGED_EXPERT_RE,
    SPLIT_EXPERT_RE,
    TensorInfo,
    TokenType,
    ValueType,
)
from huozi_local.core.gguf.header import GGUFFile, read_gguf
from huozi_local.core.gguf.metadata import SOURCE_SHA256_KEY as SOURCE_SHA256_KEY
from huozi_local.core.gguf.metadata import VERSION_KEY as VERSION_KEY
from huozi_local.core.gguf.rewrite import (
    Header,
    OutTensor,
    Piece,
    Segment,
    build_header,
    encode_kv,
    plan_segments,
)

SHA_PLACEHOLDER = "0" * 64


@dataclass(frozen=True)
class _MetadataFix:
    key: str
    value_type: ValueType
    value: object
    array_type: ValueType | None = None


def _expert_groups(gguf: GGUFFile) -> dict[tuple[int, str], list[TensorInfo]]:
    """Legacy expert tensors by (layer, kind), checked to form complete, uniform expert sets."""
    groups: dict[tuple[int, str], dict[int, TensorInfo]] = {}
    for tensor in gguf.tensors:
        match = SPLIT_EXPERT_RE.match(tensor.name)
        if match:
            key = (int(match.group(1)), match.group(2))
            groups.setdefault(key, {})[int(match.group(3))] = tensor
    merged_names = {t.name for t in gguf.tensors if MERGED_EXPERT_RE.match(t.name)}
    ordered: dict[tuple[int, str], list[TensorInfo]] = {}
    for (layer, kind), experts in groups.items():
        where = f"{gguf.path}: layer {layer} ffn_{kind}"
        expected = gguf.n_expert or len(experts)
        if sorted(experts) != list(range(expected)):
            raise GGUFError(
                f"{where} has experts {sorted(experts)}, expected 0..{expected - 1}: "
                "the file is damaged"
            )
        if f"blk.{layer}.ffn_{kind}_exps.weight" in merged_names:
            raise GGUFError(f"{where} is stored both merged and split: the file is damaged")
        tensors = [experts[i] for i in range(expected)]
        first = tensors[0]
        if len(first.shape) != 2 or any(
            (t.shape, t.ggml_type) != (first.shape, first.ggml_type) for t in tensors
        ):
            raise GGUFError(f"{where}: the experts differ in shape or type, so cannot be merged")
        ordered[(layer, kind)] = tensors
    return ordered


def _metadata_fixes(gguf: GGUFFile) -> tuple[list[_MetadataFix], list[str]]:
    """The huozi turn-ending fixes this file lacks, and a human line for each."""
    if not gguf.is_huozi:
        return [], []
    fixes: list[_MetadataFix] = []
    lines: list[str] = []
    end_id = huozi.END_OF_UTTERANCE_ID
    for role in ("eos", "eot"):
        key = f"tokenizer.ggml.{role}_token_id"
        current = gguf.special_token_ids.get(role)
        if current != end_id:
            fixes.append(_MetadataFix(key, ValueType.UINT32, end_id))
            shown = "unset" if current is None else current
            lines.append(f"{role}_token_id {shown} -> {end_id} ({huozi.END_OF_UTTERANCE})")
    types_entry = gguf.kv.get("tokenizer.ggml.token_type")  # kept for its element type
    if types_entry is not None:
        types = list(gguf.token_types)  # one per token: a huozi vocabulary has both ids
        changed = False
        for token_id in (huozi.BEGIN_OF_UTTERANCE_ID, huozi.END_OF_UTTERANCE_ID):
            if types[token_id] != TokenType.CONTROL:
                lines.append(
                    f"token type of {token_id} {gguf.token_text(token_id)} "
                    f"{gguf.token_type_name(token_id)} -> control"
                )
                types[token_id] = int(TokenType.CONTROL)
                changed = True
        if changed:
            fixes.append(
                _MetadataFix(types_entry.key, ValueType.ARRAY, types, types_entry.array_type)
            )
    if gguf.chat_template is None:
        fixes.append(_MetadataFix("tokenizer.chat_template", ValueType.STRING, huozi.CHAT_TEMPLATE))
        lines.append("embedded the huozi chat template as tokenizer.chat_template")
    return fixes, lines


@dataclass(frozen=True)
class RepairLayout:
    """The repaired file: its header bytes and size, its tensors, and for each range of the
    source's data where it goes (source order, adjacent ranges fused)."""

    header: Header
    tensors: list[OutTensor]
    segments: list[Segment]


def repair_layout(gguf: GGUFFile, source_sha256: str | None) -> RepairLayout:
    """The layout of `gguf` repaired; the header records `source_sha256` (a placeholder to patch
    after hashing when it is not known yet, at `header.marker_positions["sha"]`)."""
    fixes = _metadata_fixes(gguf)[0]
    tensors = _out_tensors(gguf)
    header = build_header(
        version=gguf.version,
        kv_blobs=_kv_blobs(gguf, fixes, source_sha256 or SHA_PLACEHOLDER),
        tensors=tensors,
        alignment=gguf.alignment,
        markers={"sha": _sha_marker()},
    )
    return RepairLayout(header, tensors, plan_segments(header, tensors))


def _out_tensors(gguf: GGUFFile) -> list[OutTensor]:
    """Source order; each merged tensor takes the place of its expert 0."""
    groups = _expert_groups(gguf)
    by_first = {tensors[0].name: key for key, tensors in groups.items()}
    out: list[OutTensor] = []
    for tensor in gguf.tensors:
        if SPLIT_EXPERT_RE.match(tensor.name):
            key = by_first.get(tensor.name)
            if key is None:
                continue  # experts 1..n-1 travel with expert 0
            experts = groups[key]
            layer, kind = key
            out.append(
                OutTensor(
                    name=f"blk.{layer}.ffn_{kind}_exps.weight",
                    shape=(*tensor.shape, len(experts)),
                    ggml_type=tensor.ggml_type,
                    pieces=tuple(Piece(gguf.data_offset + t.offset, t.n_bytes) for t in experts),
                )
            )
        else:
            out.append(
                OutTensor(
                    tensor.name,
                    tensor.shape,
                    tensor.ggml_type,
                    (Piece(gguf.data_offset + tensor.offset, tensor.n_bytes),),
                )
            )
    return out


def _kv_blobs(gguf: GGUFFile, fixes: list[_MetadataFix], source_sha256: str) -> list[bytes]:
    """Unchanged entries verbatim from the source; changed ones re-encoded where they were."""
    provenance = [
        _MetadataFix(SOURCE_SHA256_KEY, ValueType.STRING, source_sha256),
        _MetadataFix(VERSION_KEY, ValueType.STRING, __version__),
    ]
    replacing = {fix.key: fix for fix in [*fixes, *provenance]}
    blobs: list[bytes] = []
    with open(gguf.path, "rb") as handle:
        for entry in gguf.kv.values():
            fix = replacing.pop(entry.key, None)
            if fix is None:
                handle.seek(entry.start)
                blobs.append(handle.read(entry.end - entry.start))
            else:
                blobs.append(encode_kv(fix.key, fix.value_type, fix.value, fix.array_type))
    blobs += [encode_kv(f.key, f.value_type, f.value, f.array_type) for f in replacing.values()]
    return blobs


def _sha_marker() -> bytes:
    """The encoded key, type and length that precede the sha256 value in the header."""
    full = encode_kv(SOURCE_SHA256_KEY, ValueType.STRING, SHA_PLACEHOLDER)
    return full[: -len(SHA_PLACEHOLDER)]


def verify_repaired(source: GGUFFile, partial: Path, layout: RepairLayout, sha: str) -> None:
    """Re-read what was written: counts, sizes and names must be what the plan said."""
    header, tensors = layout.header, layout.tensors
    result = read_gguf(partial)
    problems: list[str] = []
    if result.file_size != header.total_size:
        problems.append(f"size {result.file_size} != {header.total_size}")
    if result.tensor_count != len(tensors):
        problems.append(f"{result.tensor_count} tensors, expected {len(tensors)}")
    if result.tensor_bytes != source.tensor_bytes:
        problems.append(f"{result.tensor_bytes} tensor bytes, source has {source.tensor_bytes}")
    for tensor in tensors:
        found = result.tensor_by_name.get(tensor.name)
        if found is None or found.n_bytes != tensor.n_bytes or found.shape != tensor.shape:
            problems.append(f"tensor {tensor.name} is not as planned")
    if result.layout == "legacy-split" or result.turn_fixes_needed():
        problems.append("the fixes did not take")
    if result.source_sha256 != sha:
        problems.append("the provenance sha256 was not recorded")
    if problems:
        raise GGUFError(f"the repaired file failed verification: {'; '.join(problems[:3])}")
