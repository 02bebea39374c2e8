"""How the command line words the fix for an error the core raised (the app has its own).

The core says what is wrong ("this configuration does not fit in memory"); the fix names the
flags and commands of this front end ("lower --ctx or --gpu-layers, or pass --force").
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


def _download(error: ModelNotDownloaded) -> str:
    if error.spec:
        return f"run `huozi-local download {error.spec}`"
    return (
        "run `huozi-local download`, or `huozi-local import FILE` for a .gguf you already have "
        "(or pass --model PATH)"
    )


def _occupied(error: ModelExists) -> str:
    if error.command == "download":
        return "pass --replace to download over it (it stays until the new file is verified)"
    if error.own_name:
        return "pass --replace to replace it, or rename your file and import it again"
    return (
        "pass --replace to replace it, or --keep-both to keep it and import this one under "
        "its own file name"
    )


CLI_REMEDIES: Remedies = {
    PlanDoesNotFit: lambda _: "lower --ctx or --gpu-layers, or pass --force to load it anyway",
    ContextTooSmall: lambda _: "shorten it or load the model with a larger --ctx",
    LegacyLayout: lambda e: f"run `huozi-local repair {e.path}`",
    ModelNotDownloaded: _download,
    ModelExists: _occupied,
    SourceLacksModel: lambda _: "use --source hf",
    RemoteProtocolError: lambda _: (
        "that is not the OpenAI API; check that --endpoint is the API root of an "
        "OpenAI-compatible server (e.g. http://HOST:8000/v1) and that the server is up to date"
    ),
}


def cli_wording(error: HuoziError) -> str:
    """The one line the command line prints for `error`: what is wrong, then the fix."""
    return with_remedy(error, CLI_REMEDIES)
