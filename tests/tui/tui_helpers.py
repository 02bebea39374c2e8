"""Waiting on a running app without timed assertions: poll the app's own state, step by step."""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot

MAX_STEPS = 2000


async def wait_for(pilot: Pilot[object], condition: Callable[[], bool], what: str) -> None:
    """Let the app run until `condition` holds; fail with `what` if it never does."""
    for _ in range(MAX_STEPS):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"the app never reached: {what}")


def chat_ready(app: object) -> bool:
    """The chat screen is current and composed (switching to it comes before its widgets)."""
    from huozi_local.tui.screens.chat import ChatScreen

    screen = getattr(app, "screen", None)
    return isinstance(screen, ChatScreen) and bool(screen.query("#prompt"))
