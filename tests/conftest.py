"""Shared fixtures: tiny huozi-shaped models (built once per session) and an isolated HUOZI_HOME."""

from __future__ import annotations

import os
import signal
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from huozi_local.core.planning import hardware
from huozi_local.core.planning.hardware import GiB, Machine
from huozi_local.testing.conversations import CONVERSATIONS, Conversation
from huozi_local.testing.tiny_model import TinyModels

TEST_MACHINE = Machine.synthetic("cpu", 0, 24 * GiB, cores=2)
"""The machine every command and screen plans for in tests: a laptop without a usable GPU
(21 GiB of RAM available, two cores). Tests that need another one describe it themselves."""


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY")
UNSET_FOR_TESTS = (
    "HF_HUB_OFFLINE",  # the download tests talk to their own hub on 127.0.0.1
    "HF_ENDPOINT",
    "HF_TOKEN",
    "MODELSCOPE_ENDPOINT",
    "NO_COLOR",  # snapshots are taken in colour; NO_COLOR=1 in a shell must not change them
    "FORCE_COLOR",
    "HUOZI_HOME",  # tests that want one ask for the huozi_home fixture
    "HUOZI_MODELS_DIR",
    "LC_ALL",
)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the children the tests start, as it does a user's command.

    A shell starts a background job (`pytest ... &`, CI runners, nohup) with SIGINT ignored, and an
    ignored signal stays ignored across exec: every child would then shrug off the Ctrl-C its test
    sends. A handled signal is reset to the default in a child, so handling it here is enough.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def pinned_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The suite owns its environment: whatever the shell says (proxies, offline mode, NO_COLOR,
    a C locale, a read-only home), every test, and every child process it starts, sees the same.

    Proxies are cleared and loopback named as direct (a test that wants a proxy sets one), and
    HOME and the XDG folders point into the test's own folder, so nothing a library writes
    (ModelScope's credentials, caches) lands in the real home.
    """
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost,::1")
    for name in UNSET_FOR_TESTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")
    home = tmp_path_factory.mktemp("home")  # beside the test's tmp_path, never inside it
    monkeypatch.setenv("HOME", str(home))
    for name, folder in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_STATE_HOME", ".local/state"),
    ):
        monkeypatch.setenv(name, str(home / folder))


@pytest.fixture(autouse=True)
def described_machine(monkeypatch: pytest.MonkeyPatch) -> Machine:
    """Plans never depend on the machine running the tests (a GPU, a Mac, free RAM that moves).

    The probes themselves are tested in test_hardware.py with injected fakes.
    """
    monkeypatch.setattr(hardware, "detect_machine", lambda **_: TEST_MACHINE)
    # CLI children run the real probes: keep a local GPU out of their plans (RPC workers count).
    monkeypatch.setenv(hardware.IGNORE_LOCAL_GPUS_ENV, "1")
    return TEST_MACHINE


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tiny models built on demand into one session folder; every variant at most once.

    HUOZI_TINY_MODELS_DIR reuses a folder across runs (handy when iterating locally).
    """
    cached = os.environ.get("HUOZI_TINY_MODELS_DIR")
    root = Path(cached) if cached else tmp_path_factory.mktemp("tiny-models")
    return TinyModels(root)


@pytest.fixture
def huozi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every app path under a temporary HUOZI_HOME, never the developer's real folders."""
    home = tmp_path / "huozi-home"
    monkeypatch.setenv("HUOZI_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield home


@pytest.fixture(scope="session")
def conversations() -> tuple[Conversation, ...]:
    """Multi-turn Chinese conversations the project wrote itself (never ../shared's files)."""
    return CONVERSATIONS


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A skipped test fails the run: a test skipped for missing data or a missing tool proves
    nothing while the run looks green. Only a test marked `may_skip` (it needs something only
    some machines allow, such as mounting a filesystem) may skip, and `-ra` still lists it."""
    report = yield
    allowed = item.get_closest_marker("may_skip") is not None
    if report.skipped and not hasattr(report, "wasxfail") and not allowed:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and a skip fails this suite: {reason}"
    return report
