"""`ask` and `chat` when their input or output misbehaves: a reader that leaves, an encoding that
cannot write Chinese, bytes that are not UTF-8, a read-only home, an impossible --ctx or plan.
Run as a user runs them (subprocesses, tiny models); a hang shows as a timeout, not a stuck suite.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from huozi_local.core.planning.hardware import Machine
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

HANG_GUARD_S = 120  # far above a normal run: only a hang reaches it


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "huozi_local", *args]


def environment(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HUOZI_HOME": str(home), **extra}


@pytest.fixture(scope="module")
def chat_model(tiny_models: TinyModels) -> Path:
    return tiny_models.get("merged", "q4_0", "chat")


@pytest.fixture(scope="module")
def loop_model(tiny_models: TinyModels) -> Path:
    return tiny_models.get("merged", "q4_0", "loop")


def test_ask_whose_reader_leaves_ends_quietly_instead_of_hanging(
    loop_model: Path, huozi_home: Path
) -> None:
    """`ask ... | head -c 10`: the reply generator stayed suspended holding the engine's lock
    and `engine.close()` waited on it forever."""
    process = subprocess.Popen(
        command("ask", "你好", "--model", str(loop_model), "--max-tokens", "100000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(huozi_home),
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.read(10)
    process.stdout.close()  # the reader leaves, as `head -c 10` does
    try:
        code = process.wait(HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("ask hung after its reader left")
    assert first.decode("utf-8", "ignore").startswith(RIG_TEXT[:3])
    assert code == 0
    assert process.stderr.read() == b""  # no traceback, no "Exception ignored"


@pytest.mark.parametrize("verb", ["ask", "chat"])
def test_output_encoding_that_cannot_write_chinese_is_one_line_not_a_hang(
    chat_model: Path, huozi_home: Path, verb: str
) -> None:
    done = subprocess.run(
        command(*([verb, "hi"] if verb == "ask" else [verb]), "--model", str(chat_model)),
        input="hi\n" if verb == "chat" else None,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=environment(huozi_home, PYTHONIOENCODING="ascii"),
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "huozi-local: the output encoding (ascii) cannot write this text: "
        "set PYTHONIOENCODING=utf-8 or use a UTF-8 locale"
    ]


def test_ask_with_bytes_that_are_not_utf8_in_the_argument_is_one_line(
    chat_model: Path, huozi_home: Path
) -> None:
    """`ask $'caf\\xe9'` was a UnicodeEncodeError traceback from the tokenizer."""
    done = subprocess.run(
        [*map(os.fsencode, command("ask")), b"caf\xe9", b"--model", os.fsencode(chat_model)],
        capture_output=True,
        env=environment(huozi_home),
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2
    err = done.stderr.decode().strip()
    assert err.startswith("huozi-local: TEXT is not valid UTF-8") and "\n" not in err


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
@pytest.mark.parametrize("verb", ["ask", "chat"])
def test_stdin_bytes_that_are_not_utf8_are_one_line(
    chat_model: Path, huozi_home: Path, verb: str, locale: str
) -> None:
    """`printf 'hi\\xff\\n' | huozi-local chat` was a UnicodeDecodeError traceback (strict
    stdin) or a UnicodeEncodeError deep in the engine (surrogateescape stdin, C locale)."""
    done = subprocess.run(
        command(verb, "--model", str(chat_model)),
        input=b"hi\xff\n",
        capture_output=True,
        env=environment(huozi_home, LC_ALL=locale, PYTHONUTF8="0"),
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.decode().strip()
    assert err.startswith("huozi-local: ") and "not valid UTF-8" in err and "\n" not in err


def test_messages_file_with_a_lone_surrogate_escape_is_one_line(
    chat_model: Path, huozi_home: Path, tmp_path: Path
) -> None:
    messages = tmp_path / "m.json"
    messages.write_text('[{"role": "user", "content": "caf\\udce9"}]', encoding="utf-8")
    done = subprocess.run(
        command("ask", "--messages", str(messages), "--model", str(chat_model)),
        capture_output=True,
        text=True,
        env=environment(huozi_home),
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2
    assert "message 0 is not valid UTF-8" in done.stderr and len(done.stderr.splitlines()) == 1


def test_chat_autosave_failure_is_told_once_and_the_chat_goes_on(
    chat_model: Path, huozi_home: Path
) -> None:
    """A read-only data folder dropped every autosave silently. A file where the data folder
    should be makes the failure certain even for root."""
    huozi_home.mkdir(parents=True, exist_ok=True)
    (huozi_home / "data").write_text("not a folder", encoding="utf-8")
    done = subprocess.run(
        command("chat", "--model", str(chat_model)),
        input="你好\n再说一次\n",
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=environment(huozi_home),
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(RIG_TEXT) == 2
    told = [line for line in done.stderr.splitlines() if "cannot autosave" in line]
    assert len(told) == 1 and "/save FILE" in told[0]


@pytest.mark.parametrize("ctx", ["100000000000", "4294967296", "40000"])
def test_ctx_above_the_training_context_or_32_bits_is_refused(
    chat_model: Path, huozi_home: Path, ctx: str
) -> None:
    """`--ctx 100000000000` wrapped past 32 bits and ate memory until the machine ran out."""
    done = subprocess.run(
        command("ask", "你好", "--model", str(chat_model), "--ctx", ctx),
        capture_output=True,
        text=True,
        env=environment(huozi_home),
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"huozi-local: --ctx {ctx} is more than the model's training context (32768 tokens)"
    )


@pytest.mark.parametrize(("flag", "value"), [("--temp", "nan"), ("--max-tokens", "0")])
def test_sampling_options_get_the_settings_ranges(
    chat_model: Path, huozi_home: Path, flag: str, value: str
) -> None:
    done = subprocess.run(
        command("ask", "你好", "--model", str(chat_model), flag, value),
        capture_output=True,
        text=True,
        env=environment(huozi_home),
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"huozi-local: {flag} must be") and "\n" not in done.stderr[:-1]


def _load_args(model: Path, *, force: bool) -> argparse.Namespace:
    return argparse.Namespace(
        model=str(model), ctx=None, gpu_layers=None, cpu_moe=None, system=None, force=force
    )


def test_plan_that_does_not_fit_refuses_to_load_unless_forced(
    chat_model: Path, huozi_home: Path
) -> None:
    """It only warned, then loaded anyway: on a real machine, swapping or the OOM killer."""
    from huozi_local.commands._engine_load import load_engine
    from huozi_local.commands._remedies import cli_wording
    from huozi_local.core.errors import PlanDoesNotFit

    no_memory = Machine.synthetic("cpu", 0, 1024**2)
    with pytest.raises(PlanDoesNotFit) as refused:
        load_engine(_load_args(chat_model, force=False), machine=no_memory)
    assert re.search(r"does not fit in memory.*--force", cli_wording(refused.value))
    loaded, _settings = load_engine(_load_args(chat_model, force=True), machine=no_memory)
    try:
        assert loaded.plan.fits is False
    finally:
        loaded.engine.close()
