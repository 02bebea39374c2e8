"""config.toml: every value checked on load (type and range, one line naming the key), and written
by tomlkit so the user's comments, unknown keys and any string survive a save."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomlkit
from cli_process import cli

from huozi_local.cli import main
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError

BAD_VALUES = [
    ("max_context = 0", "max_context"),
    ("max_context = -5", "max_context"),
    ("temperature = nan", "temperature"),
    ("temperature = inf", "temperature"),
    ("top_p = 7", "top_p"),
    ("repeat_penalty = -1", "repeat_penalty"),
    ("n_ctx = -1", "n_ctx"),
    ("n_ctx = 100000000000", "n_ctx"),
    ("max_tokens = 0", "max_tokens"),
    ("n_gpu_layers = -7", "n_gpu_layers"),
    ("seed = -2", "seed"),
    ("cpu_moe = -3", "cpu_moe"),
    ("model = { name = 'huozi3' }", "model"),
    ("model = ['huozi3']", "model"),
    ("temperature = [0.2]", "temperature"),
    ("system_prompt = 3", "system_prompt"),
    ("n_ctx = true", "n_ctx"),
    ("prompt_cache = 'yes'", "prompt_cache"),
    ("prompt_cache_ram_mib = -5", "prompt_cache_ram_mib"),
    ("prompt_cache_disk_mib = 'lots'", "prompt_cache_disk_mib"),
]


def write_config(text: str) -> Path:
    path = Paths.from_env().config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "key"), BAD_VALUES)
def test_out_of_range_or_wrongly_typed_config_value_is_refused_on_load(
    huozi_home: Path, line: str, key: str
) -> None:
    path = write_config(line)
    with pytest.raises(HuoziError) as caught:
        Settings.load(path)
    message = str(caught.value)
    assert f"'{key}'" in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("command", [["ask", "hi"], ["chat"], ["serve", "--port", "0"]])
def test_zero_max_context_makes_commands_exit_2_with_one_line_not_hang(
    huozi_home: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    write_config("max_context = 0")
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("huozi-local: config ") and "'max_context'" in err
    assert len(err.splitlines()) == 1


def test_context_steps_do_not_loop_when_max_context_is_zero_or_negative() -> None:
    """The planner is also reached without a config (its own callers): a child process so that a
    loop shows as a failed run, not a test session that never ends."""
    code = (
        "from huozi_local.core.catalog import get_family\n"
        "from huozi_local.core.planning.hardware import Machine\n"
        "from huozi_local.core.planning.memory_model import ModelShape\n"
        "from huozi_local.core.planning.planner import best_plan_for_shape\n"
        "family = get_family('huozi3')\n"
        "shape = ModelShape.from_manifest(family, family.quant('q2_k'))\n"
        "machine = Machine.synthetic('cpu', 0, 64 * 1024**3)\n"
        "for max_ctx in (0, -1, -4096):\n"
        "    print(best_plan_for_shape(shape, machine, max_ctx=max_ctx).n_ctx)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "1", "1"]


def test_valid_boundaries_are_accepted(huozi_home: Path) -> None:
    path = write_config(
        "temperature = 0\ntop_p = 1\nn_ctx = 0\nn_gpu_layers = -1\nseed = -1\n"
        "max_context = 64\nrepeat_penalty = 1"
    )
    settings = Settings.load(path)
    assert (settings.temperature, settings.top_p, settings.max_context) == (0.0, 1.0, 64)
    assert isinstance(settings.repeat_penalty, float)


def test_a_table_in_config_no_longer_breaks_every_save(huozi_home: Path) -> None:
    """Before: the table landed in `extra`, then every save failed ("cannot store {...}"), so the
    app never remembered the chosen model."""
    path = write_config('model = ""\n\n[ui]\ntheme = "dark"\nrecent = [1, 2]')
    settings = Settings.load(path)
    settings.model = "huozi3:q2_k"
    settings.save(path)
    saved = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    assert saved["model"] == "huozi3:q2_k"
    assert saved["ui"] == {"theme": "dark", "recent": [1, 2]}


def test_system_prompt_with_carriage_return_and_escape_is_saved_as_valid_toml(
    huozi_home: Path,
) -> None:
    path = Paths.from_env().config_file
    prompt = 'line one\r\nline two\x1b[31m "quoted" \\ back\tslash\x7f 你好'
    Settings(system_prompt=prompt).save(path)
    assert Settings.load(path).system_prompt == prompt


def test_save_keeps_the_users_comments_order_and_unknown_keys(huozi_home: Path) -> None:
    original = (
        "# my settings, written by hand\n"
        "temperature = 0.5  # warmer than the README\n"
        "future_key = 'kept'\n"
    )
    path = write_config(original)
    settings = Settings.load(path)
    settings.top_p = 0.8
    settings.save(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith(original)
    assert "top_p = 0.8" in text
    assert Settings.load(path).extra == {"future_key": "kept"}


def test_an_invalid_settings_object_is_not_saved(huozi_home: Path) -> None:
    path = Paths.from_env().config_file
    with pytest.raises(HuoziError, match="'top_p'"):
        Settings(top_p=float("nan")).save(path)
    assert not path.exists()


def test_config_starting_with_a_byte_order_mark_is_read(huozi_home: Path) -> None:
    """Before: Notepad's UTF-8 byte-order mark made the file "not valid TOML: Invalid statement
    (at line 1, column 1)", with no hint of the invisible character; a save then dropped the
    user's comments (tomlkit could not parse the file either)."""
    path = Paths.from_env().config_file
    path.parent.mkdir(parents=True)
    path.write_bytes("\ufeff# 我的设置\ntemperature = 0.5\n".encode())
    settings = Settings.load(path)
    assert settings.temperature == 0.5
    settings.top_p = 0.8
    settings.save(path)
    text = path.read_bytes().decode("utf-8")
    assert text.startswith("# 我的设置\ntemperature = 0.5\n") and "top_p = 0.8" in text
    assert Settings.load(path).top_p == 0.8


def test_deeply_nested_config_is_one_line_and_exit_2_not_a_recursion_traceback(
    huozi_home: Path,
) -> None:
    path = write_config("a = " + "[" * 100_000 + "]" * 100_000)
    done = cli("ask", "hi", home=huozi_home)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"huozi-local: config {path} is nested too deeply to read: " + (
        "settings are plain values\n"
    )
