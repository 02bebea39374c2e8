"""Start-up stays light and the core stays UI-free, proven in fresh interpreters."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import huozi_local.core

CORE_DIR = Path(huozi_local.core.__file__).parent
CORE_MODULES = sorted(f"huozi_local.core.{m.name}" for m in pkgutil.iter_modules([str(CORE_DIR)]))


def _loaded_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_cli_import_loads_no_heavy_library() -> None:
    loaded = _loaded_after("import huozi_local.cli; huozi_local.cli.build_parser()")
    assert not loaded & {"llama_cpp", "textual", "huggingface_hub", "numpy"}


def test_help_runs_without_heavy_libraries() -> None:
    code = (
        "import sys, json, contextlib, io\n"
        "from huozi_local.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}
    assert not loaded & {"llama_cpp", "textual"}


def test_every_core_module_imports_without_ui_libraries() -> None:
    assert "huozi_local.core.gguf_file" in CORE_MODULES
    statement = "\n".join(f"import {m}" for m in CORE_MODULES)
    loaded = _loaded_after(statement)
    assert not loaded & {"textual", "rich"}


def test_core_source_never_names_ui_libraries() -> None:
    for path in CORE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"textual", "rich"}, f"{path}: imports {name}"


def test_version_and_help_from_console_script() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "huozi_local", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0
    assert version.stdout.startswith("huozi-local ")
    helped = subprocess.run(
        [sys.executable, "-m", "huozi_local", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "usage: huozi-local" in helped.stdout
