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
