"""Waiting on a running app without timed assertions: poll the app's own state, step by step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from textual.app import App
from textual.pilot import Pilot

from huozi_local.core.config import Settings
from huozi_local.core.planning.hardware import GiB, Machine

if TYPE_CHECKING:
    import threading

    from huozi_local.core.loading.load import PlannedLoad
    from huozi_local.core.progress import ProgressCallback
    from huozi_local.tui.model_choice import LoadedBackend
    from huozi_local.tui.screens.chat import ChatScreen

MAX_STEPS = 15_000
"""At least 5 minutes of steps: a budget only a hang runs out of. (2000, at least 40 s, ran
out once in a full run pinned to a busy core, with nothing on record to say why.)"""
Result = TypeVar("Result")


async def wait_for(pilot: Pilot[Result], condition: Callable[[], bool], what: str) -> None:
    """Let the app run until `condition` holds; fail with `what`, and what the app was showing,
    if it never does."""
    for _ in range(MAX_STEPS):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"the app never reached: {what}; it showed {showing(pilot.app)}")


def showing(app: App[Result]) -> str:
    """The current screen and the text of its labels and notifications (for a failure)."""
    from textual.widgets import Label, Static

    texts = [str(w.render()) for w in app.screen.query(Static) if isinstance(w, Label | Static)]
    notes = [n.message for n in app._notifications]
    return f"{type(app.screen).__name__}: {texts[:20]!r}, notifications {notes[-5:]!r}"


def chat_ready(app: App[Result]) -> bool:
    """The chat screen is current and composed (switching to it comes before its widgets)."""
    from huozi_local.tui.screens.chat import ChatScreen

    screen = app.screen
    return isinstance(screen, ChatScreen) and bool(screen.query("#prompt"))


def load_tiny(
    model_file: Path,
    settings: Settings,
    *,
    label: str = "tiny-huozi",
    quant: str = "q4_0",
    machine: Machine | None = None,
) -> tuple[PlannedLoad, LoadedBackend]:
    """A tiny model planned and loaded the way the app loads one (core.loading), on the machine
    tests plan for unless another is given."""
    from huozi_local.tui.model_choice import load_local, plan_file

    machine = machine or Machine.synthetic("cpu", 0, 24 * GiB, cores=2)
    planned = plan_file(
        model_file, label=label, quant=quant, spec=str(model_file), settings=settings,
        machine=machine,
    )  # fmt: skip
    return planned, load_local(planned, machine)


async def send_and_wait(pilot: Pilot[None], app: App[None], text: str) -> ChatScreen:
    """Type `text` in the open chat and press Enter, as a person does; wait for the reply."""
    from huozi_local.tui.screens.chat import ChatScreen
    from huozi_local.tui.widgets.chat_input import ChatInput

    screen = app.screen
    assert isinstance(screen, ChatScreen)
    done = screen.replies_finished
    prompt = screen.query_one(ChatInput)
    prompt.focus()
    prompt.insert(text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: screen.replies_finished == done + 1, f"a reply to {text}")
    return screen


class LoaderFailingOnce:
    """The app's own loader (`load_local`), except that the first load raises `failure`: what a
    Retry is for. Records each load it was asked for."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure
        self.attempts: list[PlannedLoad] = []

    def __call__(
        self,
        planned: PlannedLoad,
        machine: Machine,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> LoadedBackend:
        from huozi_local.tui.model_choice import load_local

        self.attempts.append(planned)
        if len(self.attempts) == 1:
            raise self.failure
        return load_local(planned, machine, progress, cancel)
