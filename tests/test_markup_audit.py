"""The rule behind "text is never markup", checked over the source, so new code keeps it too.

The behaviour is tested end to end (test_text_not_markup.py, tui/test_text_not_markup_app.py);
this audit catches the next place that would hand a name or a path to a markup parser:

- the commands make every rich Console through `commands/_console.text_console` (markup off,
  control characters escaped), never turn markup on, build progress columns with markup=False,
  and make styled text with `_console.styled` (a bare rich `Text` would send an `ESC` in a
  model's name to the terminal: tests/test_control_text.py);
- in the app, a Label, a Static or a notification whose text is not a literal string is built
  with markup=False (Textual reads strings as markup by default).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import huozi_local

PACKAGE = Path(huozi_local.__file__).parent
CONSOLE_MODULE = "huozi_local/commands/_console.py"
PLAIN_UNLESS_LITERAL = {"Label", "Static", "notify"}


def _calls(folder: Path) -> Iterator[tuple[str, ast.Call]]:
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                where = f"{path.relative_to(PACKAGE.parent).as_posix()}:{node.lineno}"
                yield where, node


def _name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _markup(call: ast.Call) -> object:
    """The markup= keyword's literal value; `None` when it is not given."""
    for keyword in call.keywords:
        if keyword.arg == "markup":
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "?"
    return None


def _is_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def test_commands_print_through_a_console_that_reads_no_markup() -> None:
    wrong = []
    for where, call in _calls(PACKAGE / "commands"):
        name = _name(call)
        if name == "Console" and not where.startswith(CONSOLE_MODULE):
            wrong.append(f"{where}: a Console not made by text_console()")
        if name == "from_markup" or _markup(call) is True:
            wrong.append(f"{where}: markup turned on")
        if name == "Text" and not where.startswith(CONSOLE_MODULE):
            wrong.append(f"{where}: a rich Text not made by styled()")
        if name == "TextColumn" and _markup(call) is not False:
            wrong.append(f"{where}: TextColumn without markup=False")
    assert not wrong, "\n".join(wrong)


def test_app_widgets_show_text_that_is_not_a_literal_with_markup_off() -> None:
    wrong = [
        f"{where}: {_name(call)}(...) of a non-literal text needs markup=False"
        for where, call in _calls(PACKAGE / "tui")
        if _name(call) in PLAIN_UNLESS_LITERAL
        and call.args
        and not _is_literal(call.args[0])
        and _markup(call) is not False
    ]
    assert not wrong, "\n".join(wrong)
