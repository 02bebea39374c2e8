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

# The basics at core's root (errors, progress, units, ...) import only each other. Above them
# data flows gguf -> planning -> fetch, and gguf -> chat; a layer never reaches up or sideways.
# devices (ggml's device registry and RPC) sits below planning and chat, which both use it.
# loading (plan -> measured fit -> load) sits on top: it may use every layer but store, and only
# the front ends import it.
BASICS = {"catalog", "config", "control_text", "disk", "errors", "huozi", "progress", "units"}
LAYERS = {"devices", "gguf", "planning", "fetch", "chat", "store", "loading"}
FORBIDDEN_LAYERS: dict[str, set[str]] = {
    "basics": LAYERS,
    "devices": {"gguf", "planning", "fetch", "chat", "store", "loading"},
    "gguf": {"planning", "fetch", "chat", "store", "loading"},
    "planning": {"fetch", "chat", "store", "loading"},
    "chat": {"planning", "fetch", "store", "loading"},
    "fetch": {"chat", "store", "loading"},
    "store": {"planning", "fetch", "gguf", "loading"},
    "loading": {"store"},
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


def _layer_of(path: Path) -> str:
    """The layer a core file belongs to: its subpackage, or "basics" for a module at the root
    (which must be one of the known basics: a new root module needs a place in the rules)."""
    parts = path.relative_to(CORE_DIR).parts
    if len(parts) > 1:
        return parts[0]
    stem = path.stem
    assert stem in BASICS | {"__init__"}, f"core/{path.name}: not a known basic; give it a layer"
    return "basics"


def _target_layer(name: str) -> str:
    """The layer an imported huozi_local.core.X[.Y] name lands in."""
    target = name.split(".")[2]
    return "basics" if target in BASICS else target


def _violations(path: Path, source: str) -> list[str]:
    layer = _layer_of(path)
    module_name = "huozi_local." + ".".join(path.relative_to(CORE_DIR.parent).with_suffix("").parts)
    forbidden = FORBIDDEN_LAYERS[layer]
    return [
        f"{path.relative_to(CORE_DIR)} ({layer}) imports {name}"
        for name in sorted(_core_imports(source, module_name))
        if _target_layer(name) in forbidden
    ]


def test_every_core_module_has_a_layer() -> None:
    layers = {_layer_of(path) for path in CORE_DIR.rglob("*.py")}
    assert layers <= set(FORBIDDEN_LAYERS)
    assert {"basics", "loading"} <= layers


def test_core_layers_import_only_downward() -> None:
    violations = []
    for path in sorted(CORE_DIR.rglob("*.py")):
        violations += _violations(path, path.read_text(encoding="utf-8"))
    assert violations == []


def test_layer_rule_covers_the_basics_at_cores_root() -> None:
    """A basic that reached into a layer (disk.py importing the remote backend) went unseen."""
    source = "from huozi_local.core.chat import remote_backend\n"
    found = _violations(CORE_DIR / "disk.py", source)
    assert "disk.py (basics) imports huozi_local.core.chat.remote_backend" in found
    assert _violations(CORE_DIR / "disk.py", "from huozi_local.core import units\n") == []


def test_layer_rule_keeps_the_loading_layer_on_top() -> None:
    source = "def f() -> None:\n    from huozi_local.core.loading.load import plan_load\n"
    assert _violations(CORE_DIR / "planning" / "planner.py", source) != []
    assert _violations(CORE_DIR / "fetch" / "download.py", source) != []


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
