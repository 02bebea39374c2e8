"""`import` of a file whose name is no plain text, or that sits in the import's own staging folder.

The stored name of a model under imported/ is ours to choose; the user's file name is not. A
name with bytes that are not UTF-8 (a file from another system) or a newline made the sidecar
write fail halfway, leaving a `.json.tmp` behind, and its row in `models` either broke the table
over two lines or stopped it. A file given from `models/.imports/` was deleted by the import's
own clean-up of that folder. The files are the crafted small huozi model (a sparse hole, no
model build), imported through the real CLI with real links on the test's file system.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from huozi_local.cli import main
from huozi_local.core.config import Paths
from huozi_local.core.fetch.adopt import STAGING_DIR
from huozi_local.core.fetch.model_folder import imported_model_path, read_sidecar
from huozi_local.testing.crafted_gguf import write_crafted_gguf

NOT_UTF8 = os.fsdecode(b"huozi\xff\xfe-\x1b[31mred\nline.gguf")
"""Bytes that are not UTF-8, an escape sequence and a newline, as `sys.argv` hands them over."""


@pytest.fixture
def paths(huozi_home: Path) -> Paths:
    return Paths.from_env()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_file_name_that_is_not_utf8_text_is_imported_under_a_plain_name(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_crafted_gguf(tmp_path / NOT_UTF8)

    code, out, err = run_cli(capsys, "import", str(src), "--keep-both")

    assert code == 0, err
    stored = imported_model_path(paths, src.name)
    assert stored.name == "huozi__-_[31mred_line.gguf"
    assert everything_under(paths.models_dir) == [
        f"imported/{stored.name}",
        f"imported/{stored.name}.json",
    ]  # no .json.tmp, nothing staged
    assert read_sidecar(stored)["imported_from"] == str(src)  # the user's name, as it is
    assert str(stored) in out.splitlines()

    code, out, err = run_cli(capsys, "import", str(src), "--keep-both")
    assert (code, err) == (0, "")
    assert "already imported" in out  # the sidecar's record of the odd name reads back


def test_models_lists_an_entry_whose_name_is_not_text_on_one_line(
    paths: Paths, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file put under imported/ by hand keeps its name: `models` stopped with "the output
    encoding cannot write this text", and a newline split its row."""
    folder = paths.models_dir / "imported"
    folder.mkdir(parents=True)
    write_crafted_gguf(folder / NOT_UTF8)
    monkeypatch.setenv("COLUMNS", "300")  # no cell is cut short

    code, out, err = run_cli(capsys, "models", "--offline")
    assert (code, err) == (0, "")
    shown = "huozi\\xff\\xfe-\\x1b[31mred\\nline.gguf"
    row = next(line for line in out.splitlines() if shown in line)
    assert "5.45 MB" in row and "unverified" in row
    assert "\x1b" not in out

    code, out, err = run_cli(capsys, "models", "--offline", "--json")
    assert (code, err) == (0, "")
    rows = json.loads(out)
    assert rows[-1]["filename"] == NOT_UTF8  # JSON escapes it: read back, it is the name


def test_importing_a_file_from_the_staging_folder_is_refused_and_keeps_it(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was deleted: the import clears its staging name before staging there."""
    staged = paths.models_dir / STAGING_DIR / "huozi3-q4_0.gguf"
    staged.parent.mkdir(parents=True)
    write_crafted_gguf(staged)
    before = staged.read_bytes()[:4096], staged.stat().st_size

    for extra in ((), ("--keep-both",), ("--move",)):
        code, out, err = run_cli(capsys, "import", str(staged), *extra)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and "staging folder" in err, err
        assert (staged.read_bytes()[:4096], staged.stat().st_size) == before
        assert everything_under(paths.models_dir) == [f"{STAGING_DIR}/huozi3-q4_0.gguf"]
