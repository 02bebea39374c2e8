"""One explanation of a failed connection, whichever client wrapped the socket error."""

from __future__ import annotations

import socket
import urllib.error

import pytest

from huozi_local.core.errors import connection_failure_reason


def _chained(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (
            urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
            "connection refused",
        ),
        (
            _chained(OSError("request failed"), ConnectionRefusedError(61, "refused")),
            "connection refused",
        ),
        (socket.gaierror(-2, "Name or service not known"), "host name not found"),
        (
            _chained(RuntimeError("x"), socket.gaierror(8, "nodename nor servname provided")),
            "host name not found",
        ),
        (urllib.error.URLError(TimeoutError("timed out")), "timed out"),
        (
            _chained(ConnectionError("wrapper"), OSError("Network is unreachable\nmore")),
            "Network is unreachable",
        ),
    ],
)
def test_the_reason_reads_the_whole_chain(failure: BaseException, reason: str) -> None:
    assert connection_failure_reason(failure) == reason


def test_every_error_whose_fix_differs_is_worded_by_both_front_ends() -> None:
    """A new error class with a front-end fix needs wording in the CLI and in the app."""
    from huozi_local.commands._remedies import CLI_REMEDIES
    from huozi_local.core import errors
    from huozi_local.tui.remedies import APP_REMEDIES

    with_fixes = {errors.ContextTooSmall, errors.PlanDoesNotFit, errors.LegacyLayout,
                  errors.ModelNotDownloaded, errors.SourceLacksModel,
                  errors.RemoteProtocolError, errors.ModelExists}  # fmt: skip
    assert set(CLI_REMEDIES) == set(APP_REMEDIES) == with_fixes
    for kind in with_fixes:
        samples = {
            errors.LegacyLayout: errors.LegacyLayout("x", "y"),
            errors.RemoteProtocolError: errors.RemoteProtocolError("x", server="http://h/v1"),
            errors.ModelExists: errors.ModelExists("x", "/m/a.gguf", "import"),
        }
        sample = samples.get(kind) or kind("x")
        cli, app = CLI_REMEDIES[kind](sample), APP_REMEDIES[kind](sample)
        assert cli and app and cli != app and "--" not in app  # no flag named in the app
