"""Crafted or damaged GGUF headers: every command that reads one refuses it in one line.

Each case is the small valid huozi model of `testing.crafted_gguf` with one value wrong. The
header is parsed once into a typed object whose every value is checked (type and range) where it
is read, so `inspect`, `plan`, `import` and `repair` all stop with exit 2 and one line naming
the key: no traceback, no allocation sized by the file's say-so, nothing imported.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from huozi_local.cli import main
from huozi_local.core.config import Paths, Settings
from huozi_local.core.gguf.byte_format import MAX_ARRAY_DEPTH, ValueType
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.gguf.rewrite import OutTensor, Piece
from huozi_local.testing.crafted_gguf import (
    SHAPE,
    Entry,
    Value,
    array_claiming,
    nested_arrays,
    write_crafted_gguf,
)
from huozi_local.testing.real_shape import real_shape_tensors

U32, U64, I32 = ValueType.UINT32, ValueType.UINT64, ValueType.INT32
F32, F64, STR, ARR = ValueType.FLOAT32, ValueType.FLOAT64, ValueType.STRING, ValueType.ARRAY

# case -> (the entries that differ from the valid base, the key the one line must name)
CASES: dict[str, tuple[dict[str, Entry | None], str]] = {
    "alignment_zero": ({"general.alignment": Value(U32, 0)}, "general.alignment"),
    "alignment_a_string": ({"general.alignment": Value(STR, "32")}, "general.alignment"),
    "alignment_not_a_power_of_two": ({"general.alignment": Value(U32, 48)}, "general.alignment"),
    "block_count_2_to_the_40": ({"llama.block_count": Value(U64, 2**40)}, "llama.block_count"),
    "block_count_a_string": ({"llama.block_count": Value(STR, "2")}, "llama.block_count"),
    "arrays_nested_5000_deep": ({"general.tags": nested_arrays(5000)}, "general.tags"),
    "nan_token_id": (
        {"tokenizer.ggml.eos_token_id": Value(F32, math.nan)},
        "tokenizer.ggml.eos_token_id",
    ),
    "string_token_id": (
        {"tokenizer.ggml.bos_token_id": Value(STR, "1")},
        "tokenizer.ggml.bos_token_id",
    ),
    "infinite_context_length": (
        {"llama.context_length": Value(F64, math.inf)},
        "llama.context_length",
    ),
    "array_where_a_number_belongs": (
        {"llama.embedding_length": Value(ARR, [64], U32)},
        "llama.embedding_length",
    ),
    "empty_feed_forward_length": (
        {"llama.feed_forward_length": Value(ARR, [], U32)},
        "llama.feed_forward_length",
    ),
    "ten_token_types_for_the_huozi_vocabulary": (
        {"tokenizer.ggml.token_type": Value(ARR, [1] * 10, I32)},
        "tokenizer.ggml.token_type",
    ),
    "tokens_not_strings": (
        {"tokenizer.ggml.tokens": Value(ARR, list(range(57002)), I32)},
        "tokenizer.ggml.tokens",
    ),
    "array_count_past_the_end_of_the_file": (
        {"tokenizer.ggml.scores": array_claiming(2**40)},
        "tokenizer.ggml.scores",
    ),
    "more_experts_used_than_there_are": (
        {"llama.expert_used_count": Value(U32, 9)},
        "llama.expert_used_count",
    ),
    "name_a_number": ({"general.name": Value(U32, 3)}, "general.name"),
    "file_type_infinite": ({"general.file_type": Value(F32, math.inf)}, "general.file_type"),
}


def _commands(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "inspect": ["inspect", str(path)],
        "plan": ["plan", "--model", str(path)],
        "import": ["import", str(path)],
        "repair": ["repair", str(path), "-o", str(tmp_path / "repaired.gguf")],
    }


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()] if folder.exists() else []


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_header_is_one_line_naming_the_key_in_every_command(
    case: str, tmp_path: Path, huozi_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replace, key = CASES[case]
    path = write_crafted_gguf(tmp_path / "crafted.gguf", replace)
    paths = Paths.from_env()
    for command, argv in _commands(path, tmp_path).items():
        code = main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2, (command, out, err)
        assert len(lines) == 1 and lines[0].startswith("huozi-local: "), (command, err)
        assert key in lines[0], (command, lines[0])
        assert "Traceback" not in err
    assert _files_under(paths.models_dir) == []  # import left nothing behind
    assert Settings.load(paths.config_file).model == ""  # nor made it the default
    assert [p.name for p in tmp_path.glob("*.gguf*")] == ["crafted.gguf"]  # repair wrote none


def test_the_base_of_the_crafted_cases_is_a_valid_model(tmp_path: Path) -> None:
    """Each case differs from a file every command accepts only in the value it names."""
    gguf = read_gguf(write_crafted_gguf(tmp_path / "base.gguf"))
    assert (gguf.n_layers, gguf.n_embd, gguf.vocab_size) == (2, 64, 57002)
    assert gguf.is_huozi and not gguf.load_blockers() and not gguf.turn_fixes_needed()


def test_arrays_nested_a_few_levels_deep_are_still_read(tmp_path: Path) -> None:
    """gguf-py writes nested arrays; only nesting past MAX_ARRAY_DEPTH is damage."""
    path = write_crafted_gguf(tmp_path / "n.gguf", {"general.tags": nested_arrays(MAX_ARRAY_DEPTH)})
    assert read_gguf(path).kv["general.tags"].value == [[[[]]]]


def test_a_tensor_in_a_layer_past_block_count_is_refused_without_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`blk.1099511627776.*` used to size a list of 2^40 layers."""
    far = OutTensor("blk.1099511627776.attn_norm.weight", (64,), 0, (Piece(0, 256),))
    path = write_crafted_gguf(tmp_path / "far.gguf", tensors=[*real_shape_tensors(SHAPE), far])
    assert main(["inspect", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "blk.1099511627776.attn_norm.weight" in line and "llama.block_count" in line


@pytest.mark.parametrize(
    ("replace", "tensors", "missing"),
    [
        ({}, [], "no tensors"),
        (
            {
                k: None
                for k in (
                    "tokenizer.ggml.tokens",
                    "tokenizer.ggml.scores",
                    "tokenizer.ggml.token_type",
                )
            },
            None,
            "tokenizer.ggml.tokens",
        ),
    ],
    ids=["no_tensors", "no_token_list"],
)
def test_a_file_that_is_not_a_model_is_refused_by_import_and_by_loading(
    replace: dict[str, Entry | None],
    tensors: list[OutTensor] | None,
    missing: str,
    tmp_path: Path,
    huozi_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_crafted_gguf(tmp_path / "hollow.gguf", replace, tensors=tensors)
    paths = Paths.from_env()
    for argv in (["import", str(path)], ["ask", "--model", str(path), "你好"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        (line,) = err.strip().splitlines()
        assert line.startswith("huozi-local: ") and missing in line, line
    assert _files_under(paths.models_dir) == []
    assert Settings.load(paths.config_file).model == ""
    assert main(["inspect", str(path), "--json"]) == 0  # inspect still shows what is there
    assert missing in capsys.readouterr().out


def test_a_token_id_past_the_vocabulary_is_ignored_as_llama_cpp_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """llama.cpp warns and ignores such an id (conversions write a padding id equal to the
    vocabulary size); refusing the file would turn away one llama.cpp loads."""
    path = write_crafted_gguf(
        tmp_path / "pad.gguf", {"tokenizer.ggml.padding_token_id": Value(U32, 57002)}
    )
    gguf = read_gguf(path)
    assert "padding" not in gguf.special_token_ids and gguf.special_token_ids["eos"] >= 0
    assert main(["inspect", str(path)]) == 0
    assert capsys.readouterr().err == ""
