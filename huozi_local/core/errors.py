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
