"""Errors a user can act on.

Every failure the user can fix (a missing file, a truncated download, a full disk, a malformed
config) is raised as `HuoziError` with a message that fits on one line and says what to do. Front
ends print that line and exit with status 2; anything else is a bug and may show a traceback.
"""

from __future__ import annotations


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
