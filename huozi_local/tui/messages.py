"""What a screen asks the app to do next, as messages that bubble up to it.

Screens never import the app: they post one of these and `HuoziApp` handles it, so the screens
can be built and tested alone and the import graph runs one way (app -> screens).
"""

from __future__ import annotations

from textual.message import Message

from huozi_local.core.fetch.sources import DownloadSource
from huozi_local.core.loading.load import PlannedLoad
from huozi_local.tui.model_choice import LoadedBackend


class SetupRequested(Message):
    """Go (back) to the first-run setup; `error` is shown first when there is one.

    `failed` is the model that would not load, when that was the error: Retry loads it again
    (a `--model FILE`, a model picked in settings) rather than downloading the recommended one.
    """

    def __init__(self, error: str = "", failed: PlannedLoad | None = None) -> None:
        super().__init__()
        self.error = error
        self.failed = failed


class LoadRequested(Message):
    """Load this model (again): Retry after it would not load."""

    def __init__(self, planned: PlannedLoad) -> None:
        super().__init__()
        self.planned = planned


class ModelDownloaded(Message):
    """The setup made a model ready on disk: remember it (and the source it came from, when it
    was downloaded) for the next run, then load it."""

    def __init__(self, planned: PlannedLoad, source: DownloadSource | None = None) -> None:
        super().__init__()
        self.planned = planned
        self.source = source


class BackendLoaded(Message):
    """A model finished loading: chat with it."""

    def __init__(self, planned: PlannedLoad, loaded: LoadedBackend) -> None:
        super().__init__()
        self.planned = planned
        self.loaded = loaded


class SettingsRequested(Message):
    """Open the settings dialog."""
