"""What a screen asks the app to do next, as messages that bubble up to it.

Screens never import the app: they post one of these and `HuoziApp` handles it, so the screens
can be built and tested alone and the import graph runs one way (app -> screens).
"""

from __future__ import annotations

from textual.message import Message

from huozi_local.core.chat.types import ChatBackend
from huozi_local.tui.model_choice import ModelChoice
from huozi_local.tui.session import ModelInfo


class SetupRequested(Message):
    """Go (back) to the first-run setup; `error` is shown first when there is one.

    `failed` is the model that would not load, when that was the error: Retry loads it again
    (a `--model FILE`, a model picked in settings) rather than downloading the recommended one.
    """

    def __init__(self, error: str = "", failed: ModelChoice | None = None) -> None:
        super().__init__()
        self.error = error
        self.failed = failed


class LoadRequested(Message):
    """Load this model (again): Retry after it would not load."""

    def __init__(self, choice: ModelChoice) -> None:
        super().__init__()
        self.choice = choice


class ModelDownloaded(Message):
    """The setup made a model ready on disk: remember it for the next run, then load it."""

    def __init__(self, choice: ModelChoice, spec: str) -> None:
        super().__init__()
        self.choice = choice
        self.spec = spec


class BackendLoaded(Message):
    """A model finished loading: chat with it."""

    def __init__(self, backend: ChatBackend, info: ModelInfo) -> None:
        super().__init__()
        self.backend = backend
        self.info = info


class SettingsRequested(Message):
    """Open the settings dialog."""
