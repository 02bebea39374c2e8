"""Waiting on a running app without timed assertions: poll the app's own state, step by step."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from textual.app import App
from textual.pilot import Pilot

MAX_STEPS = 2000
Result = TypeVar("Result")


async def wait_for(pilot: Pilot[Result], condition: Callable[[], bool], what: str) -> None:
    """Let the app run until `condition` holds; fail with `what` if it never does."""
    for _ in range(MAX_STEPS):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"the app never reached: {what}")


def chat_ready(app: App[Result]) -> bool:
    """The chat screen is current and composed (switching to it comes before its widgets)."""
    from huozi_local.tui.screens.chat import ChatScreen

    screen = app.screen
    return isinstance(screen, ChatScreen) and bool(screen.query("#prompt"))
