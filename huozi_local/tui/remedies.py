"""How the app words the fix for an error the core raised (the command line has its own).

The core says what is wrong; here the fix names what the app offers (Settings, setup, Import),
never a command-line flag the person cannot type in the app.
"""

from __future__ import annotations

from huozi_local.core.errors import (
    ContextTooSmall,
    HuoziError,
    LegacyLayout,
    ModelNotDownloaded,
    PlanDoesNotFit,
    SourceLacksModel,
)


def app_remedy(error: HuoziError) -> str:
    """What to do about `error` in the app ("" when its message says it all)."""
    if isinstance(error, PlanDoesNotFit):
        return "lower the context length or the GPU layers in Settings (Ctrl+S)"
    if isinstance(error, ContextTooSmall):
        return "shorten it, or raise the context length in Settings (Ctrl+S)"
    if isinstance(error, LegacyLayout):
        return "import it in setup (Use a file), which repairs a copy"
    if isinstance(error, ModelNotDownloaded):
        return "download it in setup, or import a .gguf file you already have"
    if isinstance(error, SourceLacksModel):
        return "choose another download source"
    return ""


def app_wording(error: HuoziError) -> str:
    """The message the app shows for `error`: what is wrong, then the fix."""
    remedy = app_remedy(error)
    return f"{error}: {remedy}" if remedy else str(error)
