"""Errors a user can act on.

Every failure the user can fix (a missing file, a truncated download, a full disk, a malformed
config) is raised as `HuoziError` with a message that fits on one line. Front ends print that line
and exit with status 2; anything else is a bug and may show a traceback.

The core says what is wrong; how to fix it depends on where the user is (a flag on the command
line, a field in the app's settings). The errors whose fix differs between front ends have their
own class here, and each front end words the fix for itself (`commands/_remedies.py`,
`tui/remedies.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HuoziError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class Cancelled(HuoziError):
    """Long work stopped because the caller set its cancel event (Ctrl-C, Escape, a button)."""

    exit_code = 130


class GGUFError(HuoziError):
    """A file is not a readable GGUF model (missing, truncated, not GGUF, unsupported)."""


class NotEnoughDisk(HuoziError):
    """The target folder cannot hold what is about to be written."""


class WorkerLost(HuoziError):
    """An RPC worker went away while the model was using it; the model must be reloaded."""


class ContextTooSmall(HuoziError):
    """The newest message alone does not fit the context the model was loaded with."""


class PlanDoesNotFit(HuoziError):
    """The plan needs more memory than the machine has; loading it would swap or be killed."""


class LegacyLayout(HuoziError):
    """The file stores its experts in the pre-2024 layout that llama.cpp no longer loads."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class ModelNotDownloaded(HuoziError):
    """The model named is not on this disk (`spec` is empty when no model is there at all)."""

    def __init__(self, message: str, spec: str = "") -> None:
        super().__init__(message)
        self.spec = spec


class ModelExists(HuoziError):
    """Another file already has the name a model would take; it was left as it is.

    It may be the only copy the user has (a download, a file imported with `--move`), so no
    command replaces it unless told to. `command`: "import" or "download", whose flags the
    command line names; `own_name`: the new file would already go under its own file name, so
    importing it under that name is no way out.
    """

    def __init__(self, message: str, path: str, command: str, own_name: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.command = command
        self.own_name = own_name


class SourceLacksModel(HuoziError):
    """The chosen download source does not publish this model."""


class RemoteError(HuoziError):
    """An OpenAI-compatible server (`--endpoint`) gave no usable reply: it could not be reached,
    answered with an HTTP error, reported an error, went quiet or hung up. `server` is its base
    URL, which the message names, so the line says whose fault it is."""

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(message)
        self.server = server


class RemoteProtocolError(RemoteError):
    """The server answered, but not as the OpenAI API allows (a chunk whose 'choices' is a
    number, bytes that are not UTF-8, an HTML page): the server is at fault, never the user's
    input, and the fix is to point at a real OpenAI-compatible API."""


_NAME_LOOKUP_FAILURES = (
    "name or service",
    "nodename",
    "getaddrinfo",
    "name resolution",
    "no address associated",
    "gaierror",
)


def connection_failure_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words: 'connection refused', 'host name not found',
    'timed out', or the innermost cause's first line.

    Every client wraps the socket error differently (urllib's URLError.reason, httpx and
    requests chain it as the cause), so the whole chain is read; the one helper keeps the hub,
    ModelScope, the downloader and the remote chat backend saying the same thing.
    """
    chain = [exc]
    while len(chain) < 20:
        cause = chain[-1].__cause__ or chain[-1].__context__
        if cause is None:
            break
        chain.append(cause)
    texts = [f"{type(e).__name__} {e}" for e in chain]
    texts += [f"{type(r).__name__} {r}" for r in map(_reason_of, chain) if r is not None]
    lowered = " ".join(texts).lower()
    if "refused" in lowered:
        return "connection refused"
    if any(word in lowered for word in _NAME_LOOKUP_FAILURES):
        return "host name not found"
    if "timed out" in lowered or "timeout" in lowered:
        return "timed out"
    innermost = chain[-1]
    text = str(_reason_of(innermost) or innermost) or type(innermost).__name__
    return text.splitlines()[0][:120]


def _reason_of(exc: BaseException) -> BaseException | None:
    """urllib's URLError keeps the socket error in `.reason` rather than as its cause."""
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, BaseException) else None


Remedies = dict[type[HuoziError], "Callable[[Any], str]"]
"""How a front end words the fix for each error class whose fix it knows (others: none)."""


def with_remedy(error: HuoziError, remedies: Remedies) -> str:
    """The one line a front end shows: what is wrong (the core's words), then its own fix."""
    for kind, remedy in remedies.items():
        if isinstance(error, kind):
            return f"{error}: {remedy(error)}"
    return str(error)
