"""How the command line words the fix for an error the core raised (the app has its own).

The core says what is wrong ("this configuration does not fit in memory"); the fix names the
flags and commands of this front end ("lower --ctx or --gpu-layers, or pass --force").
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


def cli_remedy(error: HuoziError) -> str:
    """What to do about `error` on the command line ("" when its message says it all)."""
    if isinstance(error, PlanDoesNotFit):
        return "lower --ctx or --gpu-layers, or pass --force to load it anyway"
    if isinstance(error, ContextTooSmall):
        return "shorten it or load the model with a larger --ctx"
    if isinstance(error, LegacyLayout):
        return f"run `huozi-local repair {error.path}`"
    if isinstance(error, ModelNotDownloaded):
        if error.spec:
            return f"run `huozi-local download {error.spec}`"
        return (
            "run `huozi-local download`, or `huozi-local import FILE` for a .gguf you already "
            "have (or pass --model PATH)"
        )
    if isinstance(error, SourceLacksModel):
        return "use --source hf"
    return ""


def cli_wording(error: HuoziError) -> str:
    """The one line the command line prints for `error`: what is wrong, then the fix."""
    remedy = cli_remedy(error)
    return f"{error}: {remedy}" if remedy else str(error)
