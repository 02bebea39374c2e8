"""The settings screen holds edits to the same ranges config.toml is held to (NaN included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import Input, Static
from tui_helpers import wait_for

from huozi_local.core.config import Paths, Settings
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.tui.screens.settings import SettingsScreen

TEST_MACHINE = Machine.synthetic("cpu", 0, 24 * GiB, cores=2)


class SettingsHost(App[None]):
    def __init__(self, paths: Paths) -> None:
        super().__init__()
        self.paths = paths
        self.results: list[Settings | None] = []

    def on_mount(self) -> None:
        screen = SettingsScreen(Settings(model="huozi3:q2_k"), self.paths, None, TEST_MACHINE)
        self.push_screen(screen, self.results.append)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "nan"),
        ("top_p", "7"),
        ("repeat_penalty", "-1"),
        ("n_ctx", "-1"),
        ("cpu_moe", "-2"),
    ],
)
async def test_settings_screen_refuses_out_of_range_value_naming_the_key(
    huozi_home: Path, field: str, value: str
) -> None:
    app = SettingsHost(Paths.from_env())
    async with app.run_test(size=(110, 50)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        app.screen.query_one(f"#{field}", Input).value = value
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen), "an invalid value was accepted"
        assert app.results == []
        shown = str(app.screen.query_one("#estimate", Static).render())
        assert f"'{field}'" in shown
        in_range = {"n_ctx": "0", "cpu_moe": "-1"}.get(field, "0.5")
        app.screen.query_one(f"#{field}", Input).value = in_range
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: bool(app.results), "saving")
    (saved,) = app.results
    assert saved is not None
