"""The bare command: the app's options work without `tui`, and a stray word gets one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from huozi_local.cli import COMMAND_MODULES, build_parser, main
from huozi_local.commands.app import run_app


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits from inside parse_args
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_app_options_at_the_top_level_open_the_app() -> None:
    args = build_parser().parse_args(["--model", "~/Downloads/huozi3-q4_0.gguf"])
    assert args.model == "~/Downloads/huozi3-q4_0.gguf"
    assert getattr(args, "handler", None) is None  # no command: main() runs the app
    args = build_parser().parse_args(["--endpoint", "http://gpu-box:8000/v1", "--api-key", "k"])
    assert (args.endpoint, args.api_key) == ("http://gpu-box:8000/v1", "k")
    assert build_parser().parse_args(["--cpu-moe", "8"]).cpu_moe == 8


def test_tui_keeps_a_model_given_before_it_and_takes_its_own() -> None:
    before = build_parser().parse_args(["--model", "a.gguf", "tui"])
    assert before.model == "a.gguf" and before.handler is run_app
    after = build_parser().parse_args(["tui", "--model", "b.gguf", "--cpu-moe", "4"])
    assert (after.model, after.cpu_moe) == ("b.gguf", 4)
    kept = build_parser().parse_args(["--cpu-moe", "2", "tui"])
    assert kept.cpu_moe == 2


def test_an_unknown_word_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "chta")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("huozi-local: unknown command 'chta' (commands: tui, chat, ask,")
    assert "import" in err and len(COMMAND_MODULES) == err.count(",") + 1


def test_a_file_name_in_place_of_a_command_says_how_to_open_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(capsys, "huozi3-q4_0.gguf")
    assert code == 2 and err.count("\n") == 1
    assert "huozi-local --model huozi3-q4_0.gguf" in err
    assert "huozi-local import huozi3-q4_0.gguf" in err


def test_a_bad_option_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "chat", "--ctx", "lots")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("huozi-local: argument --ctx: invalid int value: 'lots'")


def test_top_level_model_that_is_not_a_model_fails_before_the_app(
    huozi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.gguf"
    notes.write_text("shopping list\n" * 10, encoding="utf-8")
    code, _, err = run_cli(capsys, "--model", str(notes))
    assert code == 2 and err.count("\n") == 1
    assert "is not a GGUF model file" in err
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "missing.gguf"))
    assert code == 2 and "no such model file" in err
