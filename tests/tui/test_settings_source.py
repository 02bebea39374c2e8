"""Where models download from is a setting too: edited in the settings screen, used by download."""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.widgets import Input, Select, Static
from tui_helpers import wait_for

from huozi_local.core.config import Paths, Settings
from huozi_local.core.fetch.sources import download_args
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.tui.screens.settings import SettingsScreen

TEST_MACHINE = Machine.synthetic("cpu", 0, 24 * GiB, cores=2)


class SettingsHost(App[None]):
    def __init__(self, paths: Paths, settings: Settings) -> None:
        super().__init__()
        self.paths = paths
        self.settings = settings
        self.results: list[Settings | None] = []

    def on_mount(self) -> None:
        screen = SettingsScreen(self.settings, self.paths, None, TEST_MACHINE)
        self.push_screen(screen, self.results.append)


async def test_source_and_mirror_are_edited_and_checked(huozi_home: Path) -> None:
    app = SettingsHost(Paths.from_env(), Settings(download_source="hf"))
    async with app.run_test(size=(110, 60)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings")
        screen = app.screen
        assert screen.query_one("#download_source", Select).value == "hf"
        screen.query_one("#download_source", Select).value = "mirror"
        screen.query_one("#mirror_endpoint", Input).value = "mirror.example.cn"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.results == [], "a mirror without a scheme was accepted"
        assert "must start with https://" in str(screen.query_one("#estimate", Static).render())

        screen.query_one("#mirror_endpoint", Input).value = "https://mirror.example.cn/"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: bool(app.results), "saving")
    (saved,) = app.results
    assert saved is not None
    assert (saved.download_source, saved.mirror_endpoint) == ("mirror", "https://mirror.example.cn")
    assert download_args(saved.download_source, saved.mirror_endpoint) == (
        "hf",
        "https://mirror.example.cn",
    )
