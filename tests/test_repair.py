"""Repairing legacy split-expert huozi files, checked with today's llama.cpp itself."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from huozi_local.core import huozi
from huozi_local.core.errors import Cancelled, GGUFError
from huozi_local.core.gguf.header import GGUFFile, read_gguf
from huozi_local.core.gguf.repair import (
    RepairResult,
    default_output,
    repair_gguf,
    repair_plan,
)
from huozi_local.core.gguf.repair_layout import VERSION_KEY
from huozi_local.core.progress import Progress
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels, file_sha256

QUANTS = ("f32", "q4_0", "q2_k")
PROMPT = "<|beginofutterance|>用户\n你好，请介绍一下你自己。<|endofutterance|>\n"


@pytest.fixture(scope="module")
def repaired(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny legacy files of every quant, repaired once for the module."""
    folder = tmp_path_factory.mktemp("repaired")
    out: dict[str, Path] = {}
    for quant in QUANTS:
        src = tiny_models.get("split", quant)  # type: ignore[arg-type]
        result = repair_gguf(src, folder / f"{quant}.gguf")
        assert result.output is not None
        out[quant] = result.output
    return out


def _tensor_bytes(gguf: GGUFFile, name: str) -> bytes:
    tensor = gguf.tensor_by_name[name]
    with open(gguf.path, "rb") as handle:
        handle.seek(gguf.data_offset + tensor.offset)
        return handle.read(tensor.n_bytes)


def _logits(path: Path, tokens: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, n_threads=2, verbose=False)
    llm.eval(tokens)
    scores = np.array(llm.scores[: len(tokens)], copy=True)
    llm.close()
    return scores


def _prompt_tokens(path: Path) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    tokens: list[int] = vocab.tokenize(PROMPT.encode(), add_bos=True, special=True)
    vocab.close()
    return tokens


@pytest.mark.slow
@pytest.mark.parametrize("quant", QUANTS)
def test_repaired_logits_equal_the_natively_merged_model(
    tiny_models: TinyModels, repaired: dict[str, Path], quant: str
) -> None:
    merged = tiny_models.get("merged", quant)  # type: ignore[arg-type]
    tokens = _prompt_tokens(repaired[quant])
    assert huozi.BEGIN_OF_UTTERANCE_ID in tokens and len(tokens) > 8
    expected = _logits(merged, tokens)
    got = _logits(repaired[quant], tokens)
    assert got.shape == (len(tokens), huozi.VOCAB_SIZE)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("quant", QUANTS)
def test_repaired_tensors_are_the_merged_files_bytes(
    tiny_models: TinyModels, repaired: dict[str, Path], quant: str
) -> None:
    merged = read_gguf(tiny_models.get("merged", quant))  # type: ignore[arg-type]
    fixed = read_gguf(repaired[quant])
    assert fixed.layout == "merged" and fixed.load_blockers() == []
    assert [t.name for t in fixed.tensors] == [t.name for t in merged.tensors]
    for tensor in merged.tensors:
        twin = fixed.tensor_by_name[tensor.name]
        assert (twin.shape, twin.ggml_type) == (tensor.shape, tensor.ggml_type)
        assert _tensor_bytes(fixed, tensor.name) == _tensor_bytes(merged, tensor.name)
    assert fixed.tensor_by_name["blk.3.ffn_down_exps.weight"].shape == (512, 256, 8)


def test_repaired_metadata_and_provenance(
    tiny_models: TinyModels, repaired: dict[str, Path]
) -> None:
    src = tiny_models.get("split", "q4_0")
    fixed = read_gguf(repaired["q4_0"])
    assert fixed.special_token_ids["eos"] == huozi.END_OF_UTTERANCE_ID
    assert fixed.special_token_ids["eot"] == huozi.END_OF_UTTERANCE_ID
    assert fixed.special_token_ids["bos"] == huozi.BOS_ID
    assert fixed.token_type_name(57000) == fixed.token_type_name(57001) == "control"
    assert fixed.chat_template == huozi.CHAT_TEMPLATE
    assert fixed.turn_fixes_needed() == []
    assert fixed.source_sha256 == file_sha256(src)
    assert fixed.values.string(VERSION_KEY)
    source = read_gguf(src)
    # Everything else is carried over unchanged, the vocabulary included.
    for key, entry in source.kv.items():
        if key not in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.token_type"):
            assert fixed.kv[key].value == entry.value, key
    changed = [
        i
        for i, (a, b) in enumerate(zip(source.token_types, fixed.token_types, strict=True))
        if a != b
    ]
    assert changed == [57000, 57001]


def test_repair_writes_next_to_the_source_by_default(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    src = tmp_path / "huozi3-q2_k.gguf"
    src.write_bytes(tiny_models.get("split", "q2_k").read_bytes())
    before = file_sha256(src)
    known = hashlib.sha256(src.read_bytes()).hexdigest()
    result = repair_gguf(src, source_sha256=known)
    assert result.output == default_output(src) == tmp_path / "huozi3-q2_k.repaired.gguf"
    assert result.bytes_written == result.output.stat().st_size
    assert result.source_sha256 == known
    assert read_gguf(result.output).source_sha256 == known
    assert file_sha256(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name, result.output.name]


def test_repaired_rigged_model_stops_at_end_of_utterance(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    import llama_cpp

    src = tiny_models.get("split", "f32", "chat")
    result = repair_gguf(src, tmp_path / "chat.gguf")
    assert result.output is not None
    llm = llama_cpp.Llama(str(result.output), n_ctx=256, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == huozi.CHAT_TEMPLATE
    out = llm.create_completion(PROMPT + "<|beginofutterance|>助手\n", max_tokens=32, temperature=0)
    llm.close()
    assert out["choices"][0]["text"] == RIG_TEXT
    assert out["choices"][0]["finish_reason"] == "stop"


def test_repaired_model_treats_typed_end_of_utterance_as_text(
    tiny_models: TinyModels, repaired: dict[str, Path]
) -> None:
    """CONTROL tokens are only parsed in template text; USER_DEFINED ones anywhere."""
    import llama_cpp

    typed = "谢谢<|endofutterance|>".encode()

    def tokenize(path: Path, special: bool) -> list[int]:
        vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        tokens: list[int] = vocab.tokenize(typed, add_bos=False, special=special)
        vocab.close()
        return tokens

    # The official files: a user typing the marker ends the turn even with special=False.
    assert huozi.END_OF_UTTERANCE_ID in tokenize(tiny_models.get("merged", "q4_0"), False)
    # Repaired: typed text stays text; the template's own markers still parse.
    assert huozi.END_OF_UTTERANCE_ID not in tokenize(repaired["q4_0"], False)
    assert huozi.END_OF_UTTERANCE_ID in tokenize(repaired["q4_0"], True)


def test_merged_file_gets_only_the_metadata_fixes(tiny_models: TinyModels, tmp_path: Path) -> None:
    src = tiny_models.get("merged", "q2_k")
    plan = repair_plan(read_gguf(src))
    assert plan and not any("merged" in line for line in plan)
    result = repair_gguf(src, tmp_path / "fixed.gguf")
    assert result.changes[: len(plan)] == plan
    fixed, source = read_gguf(tmp_path / "fixed.gguf"), read_gguf(src)
    assert [t.name for t in fixed.tensors] == [t.name for t in source.tensors]
    assert fixed.turn_fixes_needed() == []
    assert _tensor_bytes(fixed, "output.weight") == _tensor_bytes(source, "output.weight")


def test_repairing_twice_has_nothing_to_do(repaired: dict[str, Path], tmp_path: Path) -> None:
    assert repair_plan(read_gguf(repaired["f32"])) == []
    result = repair_gguf(repaired["f32"], tmp_path / "again.gguf")
    assert result == RepairResult(None, True, [], 0, "")
    assert not (tmp_path / "again.gguf").exists()


def test_cancel_mid_repair_leaves_nothing(tiny_models: TinyModels, tmp_path: Path) -> None:
    src = tiny_models.get("split", "f32")
    before = file_sha256(src)
    cancel = threading.Event()
    seen: list[Progress] = []

    def on_progress(report: Progress) -> None:
        # The first report comes before any data moves; the repair checks the event after each
        # chunk, so this cancels after the first chunk whatever the speed of the disk.
        seen.append(report)
        if report.total and report.done < report.total:
            cancel.set()

    with pytest.raises(Cancelled):
        repair_gguf(src, tmp_path / "out.gguf", progress=on_progress, cancel=cancel)
    assert seen and seen[0].stage == "repair" and seen[-1].done < (seen[-1].total or 0)
    assert list(tmp_path.iterdir()) == []
    assert file_sha256(src) == before


def test_progress_reaches_the_total(tiny_models: TinyModels, tmp_path: Path) -> None:
    """Bytes copied plus, when the sha256 is not given, the source bytes hashed."""
    src = tiny_models.get("split", "q4_0")
    seen: list[Progress] = []
    repair_gguf(src, tmp_path / "o.gguf", progress=seen.append)
    copied = read_gguf(tmp_path / "o.gguf").tensor_bytes
    assert seen[0].done == 0
    assert seen[-1].done == seen[-1].total == copied + src.stat().st_size
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    given: list[Progress] = []
    repair_gguf(src, tmp_path / "g.gguf", progress=given.append, source_sha256="ab" * 32)
    assert given[-1].done == given[-1].total == copied


def test_stale_partial_from_a_killed_run_is_replaced(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    dst = tmp_path / "out.gguf"
    stale = tmp_path / "out.gguf.partial"
    stale.write_bytes(b"GGUF" + b"\0" * 1000)
    repair_gguf(tiny_models.get("split", "q2_k"), dst)
    assert not stale.exists()
    assert read_gguf(dst).layout == "merged"


def _interleaved_copy(src: Path, dst: Path) -> None:
    """The same legacy file with experts in HF state-dict order (gate.0, down.0, up.0, gate.1...),
    as converters that walked the checkpoint wrote them."""
    import os
    import re

    from huozi_local.core.gguf.rewrite import (
        OutTensor,
        Piece,
        build_header,
        copy_segments,
        plan_segments,
    )

    g = read_gguf(src)
    expert = re.compile(r"^blk\.(\d+)\.ffn_(gate|down|up)\.(\d+)\.weight$")

    def order(index_tensor: tuple[int, object]) -> tuple[int, int, int]:
        index, tensor = index_tensor
        match = expert.match(tensor.name)  # type: ignore[attr-defined]
        if not match:
            return (index, 0, 0)
        first = g.tensors.index(g.tensor_by_name[f"blk.{match.group(1)}.ffn_gate.0.weight"])
        return (first, int(match.group(3)), ("gate", "down", "up").index(match.group(2)))

    tensors = [t for _, t in sorted(enumerate(g.tensors), key=order)]
    out = [
        OutTensor(t.name, t.shape, t.ggml_type, (Piece(g.data_offset + t.offset, t.n_bytes),))
        for t in tensors
    ]
    with open(src, "rb") as handle:
        blobs = []
        for entry in g.kv.values():
            handle.seek(entry.start)
            blobs.append(handle.read(entry.end - entry.start))
    header = build_header(version=g.version, kv_blobs=blobs, tensors=out, alignment=g.alignment)
    src_fd, dst_fd = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT)
    os.pwrite(dst_fd, header.data, 0)
    copy_segments(src_fd, dst_fd, plan_segments(header, out), lambda n: None)
    os.close(src_fd)
    os.close(dst_fd)


def test_experts_interleaved_in_the_source_merge_the_same(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    interleaved = tmp_path / "interleaved.gguf"
    _interleaved_copy(tiny_models.get("split", "q4_0"), interleaved)
    names = [t.name for t in read_gguf(interleaved).tensors]
    assert names.index("blk.0.ffn_down.0.weight") < names.index("blk.0.ffn_gate.1.weight")
    result = repair_gguf(interleaved, tmp_path / "fixed.gguf")
    fixed = read_gguf(tmp_path / "fixed.gguf")
    merged = read_gguf(tiny_models.get("merged", "q4_0"))
    assert result.output is not None and fixed.layout == "merged"
    for tensor in merged.tensors:
        assert _tensor_bytes(fixed, tensor.name) == _tensor_bytes(merged, tensor.name)


def test_a_repaired_file_that_does_not_read_back_as_planned_never_looks_finished(
    tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step re-reads what was written. A header that went wrong on its way to the disk
    (here: one tensor name changed as it is written) fails that check, and nothing is left that
    a later command could load as a repaired model."""
    from huozi_local.core.gguf import repair as repair_module
    from huozi_local.core.gguf.rewrite import pwrite_all as real_pwrite_all

    def damaging_pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
        if offset == 0:
            data = bytes(data).replace(b"blk.0.ffn_gate_exps", b"blk.0.ffn_gatx_exps")
        real_pwrite_all(fd, data, offset)

    monkeypatch.setattr(repair_module, "pwrite_all", damaging_pwrite_all)
    with pytest.raises(GGUFError, match=r"failed verification: tensor blk\.0\.ffn_gate_exps"):
        repair_gguf(tiny_models.get("split", "q4_0"), tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []
