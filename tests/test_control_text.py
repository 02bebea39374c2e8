"""Control characters from a model file reach the terminal as visible escapes, never as codes.

A GGUF's general.name, its tensor names and a file's own name are the file author's text: an
`ESC [2J` in general.name cleared the screen of whoever ran `inspect`, `models` or `chat`, and
an OSC sequence can retitle the terminal or plant a link. The commands' one console
(`text_console`) writes every such character as `\\x1b`, `\\n`, ... so what is shown is what the
file holds, on one line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from huozi_local.cli import main
from huozi_local.core.config import Paths
from huozi_local.core.gguf.byte_format import ValueType
from huozi_local.testing.crafted_gguf import Value, write_crafted_gguf
from huozi_local.testing.tiny_model import TinyModels

CODES = "\x1b[2J\x1b]0;owned\x07\x9b31m\r\b"
"""Clear the screen, set the window title (OSC ... BEL), a C1 CSI, a carriage return, a
backspace."""
HIDDEN = {c for c in CODES if not c.isprintable()}
SHOWN = "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\r\\x08"


def test_inspect_shows_control_characters_of_the_name_and_path_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    path = write_crafted_gguf(
        tmp_path / f"file{CODES}.gguf",
        {"general.name": Value(ValueType.STRING, f"huozi{CODES}\nsecond line")},
    )

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out

    assert not HIDDEN & set(out)
    assert f"huozi{SHOWN}\\nsecond line" in out
    assert f"file{SHOWN}.gguf" in out


def test_models_shows_control_characters_of_a_file_name_escaped(
    huozi_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    folder = Paths.from_env().models_dir / "imported"
    folder.mkdir(parents=True)
    write_crafted_gguf(folder / f"m{CODES}.gguf")

    assert main(["models", "--offline"]) == 0
    out = capsys.readouterr().out

    assert not HIDDEN & set(out)
    assert f"m{SHOWN}.gguf" in out


def test_an_error_about_such_a_file_is_one_line_with_its_name_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"notes{CODES}\n.gguf"
    path.write_bytes(b"not a model")

    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err

    assert err.count("\n") == 1 and not HIDDEN & set(err[:-1])
    assert f"notes{SHOWN}\\n.gguf" in err


@pytest.mark.slow
def test_chat_shows_control_characters_of_the_model_name_escaped(
    tiny_models: TinyModels, tmp_path: Path, huozi_home: Path
) -> None:
    """The first line of an interactive chat is general.name, printed before the first prompt."""
    from odd_text import with_odd_header
    from test_text_not_markup import chat_on_a_terminal

    model = with_odd_header(
        tiny_models.get("merged", "q4_0", "chat"), tmp_path / "codes.gguf", name=f"tiny{CODES}"
    )
    done = chat_on_a_terminal("--model", str(model), home=huozi_home, typed=b"/quit\n")
    assert done.returncode == 0, done.stderr
    assert not HIDDEN & set(done.stdout + done.stderr)
    assert done.stdout.startswith(f"tiny{SHOWN} · context "), done.stdout
