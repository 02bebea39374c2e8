"""`huozi-local inspect`: what a GGUF file holds, from its header only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from huozi_local.cli import main
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.gguf.repair import repair_gguf
from huozi_local.testing.legacy_gguf import write_legacy_gguf
from huozi_local.testing.tiny_model import TinyModels, file_sha256

ISSUE_KEYS = {
    "architecture",
    "n_layers",
    "context_length",
    "n_expert",
    "n_expert_used",
    "n_embd",
    "n_head",
    "n_head_kv",
    "vocab_size",
    "special_tokens",
    "chat_template",
    "quantization",
    "layer_bytes",
    "non_layer_bytes",
    "total_tensor_bytes",
    "layout",
    "loads_as_is",
}


def _inspect_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The report as parsed JSON: its values are whatever the JSON holds."""
    assert main(["inspect", str(path), "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_json_of_a_legacy_file(tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_models.get("split", "q4_0")
    r = _inspect_json(path, capsys)
    assert set(r) >= ISSUE_KEYS
    assert (r["architecture"], r["n_layers"], r["context_length"]) == ("llama", 4, 32768)
    assert (r["n_expert"], r["n_expert_used"], r["n_embd"]) == (8, 2, 256)
    assert (r["n_head"], r["n_head_kv"], r["vocab_size"]) == (8, 2, 57002)
    tokens = {t["role"]: t for t in r["special_tokens"]}
    assert tokens["bos"]["id"] == 1 and tokens["eos"]["id"] == 2 and "eot" not in tokens
    assert tokens["end_of_utterance"] == {
        "role": "end_of_utterance",
        "id": 57001,
        "text": "<|endofutterance|>",
        "type": "user_defined",
    }
    assert r["chat_template"] is False
    assert r["layout"] == "legacy-split" and r["loads_as_is"] is False
    assert "huozi-local repair" in r["load_blockers"][0]
    assert r["quantization"]["ffn_gate.E"] == {"q4_0": 32}
    layers, outside = r["layer_bytes"], r["non_layer_bytes"]
    assert len(layers) == 4 and set(outside) == {
        "token_embd.weight",
        "output_norm.weight",
        "output.weight",
    }
    total = sum(layers) + sum(outside.values())
    assert total == r["total_tensor_bytes"] == read_gguf(path).tensor_bytes
    assert len(r["repair_plan"]) == 6


def test_json_of_a_repaired_file(
    tiny_models: TinyModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tiny_models.get("split", "q2_k")
    out = repair_gguf(src, tmp_path / "fixed.gguf").output
    assert out is not None
    r = _inspect_json(out, capsys)
    tokens = {t["role"]: t for t in r["special_tokens"]}
    assert tokens["eos"]["id"] == tokens["eot"]["id"] == 57001
    assert tokens["begin_of_utterance"]["type"] == "control"
    assert r["chat_template"] is True and r["chat_template_is_huozi"] is True
    assert r["layout"] == "merged" and r["loads_as_is"] is True and r["repair_plan"] == []
    assert r["quantization"]["ffn_up_exps"] == {"q2_k": 4}
    assert r["repaired_from_sha256"] == file_sha256(src)


def test_human_output(tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tiny_models.get("split", "f32"))]) == 0
    out = capsys.readouterr().out
    for text in (
        "architecture",
        "8 (2 used per token)",
        "57002 tokens (huozi)",
        "<|endofutterance|>",
        "legacy-split",
        "blk.3.*",
        "token_embd.weight",
        "cannot load this file as is",
        "eos_token_id 2 -> 57001",
    ):
        assert text in out, text


def test_a_27_gb_file_is_inspected_from_its_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sparse file with huozi3-q4_0's real shape: only the header has bytes on disk."""
    path = tmp_path / "huozi3-q4_0.gguf"
    size = write_legacy_gguf(path, n_layers=32, n_embd=4096, n_ff=14336, sparse=True)
    assert size > 26_000_000_000
    r = _inspect_json(path, capsys)
    assert r["file_size"] == size and r["tensor_count"] == 995
    assert r["n_layers"] == 32 and r["layout"] == "legacy-split"
    assert "merged 768 expert tensors into 96" in r["repair_plan"][0]


def test_unknown_architecture_is_shown_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inspect is for diagnosis: it reports what it cannot load (repair refuses it)."""
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), arch="mysterynet")
    writer.add_tensor("blk.0.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    r = _inspect_json(path, capsys)
    assert r["loads_as_is"] is False and "mysterynet" in r["load_blockers"][0]


@pytest.mark.parametrize("case", ["missing", "folder", "not_gguf", "truncated", "empty", "pipe"])
def test_bad_input_is_one_line_and_exit_2(
    tiny_models: TinyModels, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    path = tmp_path / "x.gguf"
    if case == "folder":
        path.mkdir()
    elif case == "not_gguf":
        path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    elif case == "truncated":
        path.write_bytes(tiny_models.get("split", "q4_0").read_bytes()[:500_000])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "pipe":  # opening it used to wait for a writer forever
        os.mkfifo(path)
    assert main(["inspect", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("huozi-local: ") and str(path) in lines[0]


def test_names_from_the_file_are_shown_as_text_not_markup(
    tiny_models: TinyModels,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A general.name or tensor name holding `[/INST]` made rich raise (a traceback instead of
    the report), and `[bold]x[/]` or a `[b]` in the path lost its brackets."""
    from odd_text import ODD_NAME, ODD_TENSOR, with_odd_header

    monkeypatch.setenv("COLUMNS", "200")  # one row per line: the names are not wrapped
    path = with_odd_header(
        tiny_models.get("merged", "f32"), tmp_path / "odd [b]x.gguf", odd_tensor=True
    )
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for text in (str(path), ODD_NAME, ODD_TENSOR, "total"):
        assert text in out, text
