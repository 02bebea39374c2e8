"""The rule behind "text is never markup", checked over the source, so new code keeps it too.

The behaviour is tested end to end (test_text_not_markup.py, tui/test_text_not_markup_app.py);
this audit catches the next place that would hand a name or a path to a markup parser:

- the commands make every rich Console through `commands/_console.text_console` (markup off,
  control characters escaped), never turn markup on, build progress columns with markup=False,
  and make styled text with `_console.styled` (a bare rich `Text` would send an `ESC` in a
  model's name to the terminal: tests/test_control_text.py);
- in the app, every Label and Static is widgets.plain's (markup off: Textual reads strings as
  markup by default; control characters escaped: Textual keeps an ESC), no module but that one
  builds a Content or a rich Text, and a widget that draws the text it is given gets it escaped
  (tui/test_control_text_app.py). Notifications all pass through `HuoziApp.notify`, which
  escapes them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import huozi_local

PACKAGE = Path(huozi_local.__file__).parent
CONSOLE_MODULE = "huozi_local/commands/_console.py"
PLAIN_MODULE = "huozi_local/tui/widgets/plain.py"
PLAIN_WIDGETS = {"Label", "Static"}
"""Widgets the app takes from widgets.plain: markup off, control characters escaped."""
TEXT_TYPES = {"Content", "Text"}
SHOWS_ITS_TEXT = {
    "Markdown", "Option", "RadioButton", "Checkbox", "Button", "Input", "TextArea", "load_text",
    "ListItem", "Tab", "Tooltip",
}  # fmt: skip
"""Textual widgets (and calls) that draw their first argument, control characters and all."""
ESCAPES = {"lines", "one_line", "visible"}


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


def _tui_modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted((PACKAGE / "tui").rglob("*.py")):
        where = path.relative_to(PACKAGE.parent).as_posix()
        if where != PLAIN_MODULE:
            yield where, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _escaped(node: ast.expr) -> bool:
    """A literal, or text that went through one of widgets.plain's escapes."""
    return _is_literal(node) or (isinstance(node, ast.Call) and _name(node) in ESCAPES)


def test_app_takes_label_and_static_from_widgets_plain() -> None:
    wrong = [
        f"{where}:{node.lineno}: {alias.name} from {node.module}, not widgets.plain"
        for where, tree in _tui_modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("textual")
        for alias in node.names
        if alias.name in PLAIN_WIDGETS
    ]
    assert not wrong, "\n".join(wrong)


def test_app_builds_no_content_or_rich_text_but_through_widgets_plain() -> None:
    """`Content(text)`, `Text(text)` and their constructors (`from_markup`, `from_ansi`) keep an
    ESC as it is; `one_line` escapes it."""
    wrong = []
    for where, tree in _tui_modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                func = func.value
            if isinstance(func, ast.Name) and func.id in TEXT_TYPES:
                wrong.append(f"{where}:{node.lineno}: {ast.unparse(node.func)}(...)")
    assert not wrong, "\n".join(wrong)


def test_app_widgets_given_text_that_is_not_a_literal_escape_it() -> None:
    """A widget that draws the text it is given (an option, a radio label, a Markdown body, an
    editor's value) gets it through `lines`, `one_line` or `visible`."""
    wrong = [
        f"{where}:{call.lineno}: {_name(call)}({ast.unparse(call.args[0])}) is not escaped"
        for where, tree in _tui_modules()
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and _name(call) in SHOWS_ITS_TEXT
        and call.args
        and not _escaped(call.args[0])
    ]
    assert not wrong, "\n".join(wrong)
