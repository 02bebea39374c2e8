"""How the app words the fix for an error the core raised (the command line has its own).

The core says what is wrong; here the fix names what the app offers (Settings, setup, Import),
never a command-line flag the person cannot type in the app.
"""

from __future__ import annotations

from huozi_local.core.errors import (
    ContextTooSmall,
    HuoziError,
    LegacyLayout,
    ModelExists,
    ModelNotDownloaded,
    PlanDoesNotFit,
    Remedies,
    RemoteProtocolError,
    SourceLacksModel,
    with_remedy,
)

APP_REMEDIES: Remedies = {
    PlanDoesNotFit: lambda _: "lower the context length or the GPU layers in Settings (Ctrl+S)",
    ContextTooSmall: lambda _: "shorten it, or raise the context length in Settings (Ctrl+S)",
    LegacyLayout: lambda _: "import it in setup (Use a file), which repairs it",
    ModelNotDownloaded: lambda _: "download it in setup, or import a .gguf file you already have",
    SourceLacksModel: lambda _: "choose another download source",
    RemoteProtocolError: lambda _: (
        "that is not the OpenAI API; check that the server's address is the API root of an "
        "OpenAI-compatible server and that the server is up to date"
    ),
    ModelExists: lambda _: (
        "move that file out of the models folder first if this one should take its place"
    ),
}


def app_wording(error: HuoziError) -> str:
    """The message the app shows for `error`: what is wrong, then the fix."""
    return with_remedy(error, APP_REMEDIES)
