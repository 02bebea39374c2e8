"""Start-up stays light and the core stays UI-free, proven in fresh interpreters."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import huozi_local
import huozi_local.core

PACKAGE_DIR = Path(huozi_local.__file__).parent
CORE_DIR = Path(huozi_local.core.__file__).parent
CORE_MODULES = sorted(
    m.name for m in pkgutil.walk_packages([str(CORE_DIR)], prefix="huozi_local.core.")
)

# Data flows gguf -> planning -> fetch, and gguf -> chat; a layer never reaches up or sideways.
# devices (ggml's device registry and RPC) sits below planning and chat, which both use it.
FORBIDDEN_LAYERS: dict[str, set[str]] = {
    "devices": {"gguf", "planning", "fetch", "chat", "store"},
    "gguf": {"planning", "fetch", "chat", "store"},
    "planning": {"fetch", "chat", "store"},
    "chat": {"planning", "fetch", "store"},
    "store": {"planning", "fetch", "gguf"},
}


def _imported_names(source: str, module_name: str) -> set[str]:
    """Every dotted name a source imports, function-level and relative imports too."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = module_name.rsplit(".", node.level)[0]
                module = f"{base}.{module}" if module else base
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _core_imports(source: str, module_name: str) -> set[str]:
    """Every huozi_local.core module named in a source."""
    return {n for n in _imported_names(source, module_name) if n.startswith("huozi_local.core.")}


def _package_import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its source, TYPE_CHECKING too)."""
    modules: dict[str, Path] = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ("huozi_local", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # A package's relative imports start from the package itself, not from its parent.
        anchor = f"{name}.__init__" if path.name == "__init__.py" else name
        found = {module_of(n) for n in _imported_names(path.read_text(encoding="utf-8"), anchor)}
        graph[name] = {m for m in found if m is not None and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or around a loop."""

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
        return seen

    reach = {name: reachable(name) for name in graph}
    groups = {
        tuple(sorted({name} | {o for o in reach[name] if name in reach[o]}))
        for name in graph
        if name in reach[name]
    }
    return [list(group) for group in sorted(groups)]


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
    assert "huozi_local.core.gguf.header" in CORE_MODULES
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


def test_core_layers_import_only_downward() -> None:
    violations = []
    for path in sorted(CORE_DIR.rglob("*.py")):
        layer = path.relative_to(CORE_DIR).parts[0]
        module_name = "huozi_local." + ".".join(
            path.relative_to(CORE_DIR.parent).with_suffix("").parts
        )
        for name in _core_imports(path.read_text(encoding="utf-8"), module_name):
            target = name.split(".")[2]
            if target in FORBIDDEN_LAYERS.get(layer, set()):
                violations.append(f"{path.relative_to(CORE_DIR)} imports {name}")
    assert violations == []


def test_layer_rule_sees_imports_inside_functions() -> None:
    source = (
        "def f() -> None:\n    from ..fetch import hub\n    import huozi_local.core.chat.engine\n"
    )
    found = _core_imports(source, "huozi_local.core.gguf.hidden")
    assert {"huozi_local.core.fetch.hub", "huozi_local.core.chat.engine"} <= found


def test_the_package_has_no_import_cycle() -> None:
    """Screens post messages to the app rather than import it: imports run one way."""
    graph = _package_import_graph()
    assert "huozi_local.tui.screens.setup" in graph
    assert _cycles(graph) == []


def test_cycle_finder_sees_a_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
