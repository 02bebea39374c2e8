"""Several connections, repaired in the stream, resumed after anything: against the fake hub on
127.0.0.1 (real HTTP ranges), driven by the real huggingface_hub client and our downloader."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.error import HTTPError
from urllib.request import HTTPRedirectHandler, ProxyHandler, Request, build_opener

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import FakeHub, running_hub

from huozi_local.core.config import Paths
from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.fetch.download import download_model
from huozi_local.core.fetch.in_place import InPlaceFiles
from huozi_local.core.fetch.model_folder import family_model_path, read_sidecar
from huozi_local.core.gguf.repair import repair_gguf
from huozi_local.core.progress import Progress
from huozi_local.testing.tiny_model import TinyModels

HUOZI_REPO = "HIT-SCIR/huozi3-gguf"
FILE = "huozi3-q2_k.gguf"
SPEC = "huozi3:q2_k"
MiB = 1 << 20


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def legacy(tiny_models: TinyModels) -> Path:
    """The official files' layout: one tensor per expert (28 MB here)."""
    return tiny_models.get("split", "q4_0", rig="chat")


@pytest.fixture(scope="module")
def repaired_reference(legacy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `huozi-local repair` makes of the same file on disk."""
    return (
        repair_gguf(legacy, tmp_path_factory.mktemp("reference") / "repaired.gguf").output or legacy
    )


@pytest.fixture
def hub(legacy: Path) -> Iterator[FakeHub]:
    with running_hub() as fake:
        fake.add_file(HUOZI_REPO, FILE, legacy)
        yield fake
        fake.stall_after_bytes = None  # let any held connection go


@pytest.fixture
def paths(huozi_home: Path) -> Paths:
    return Paths.from_env()


def on_disk(folder: Path) -> int:
    """Bytes the files under `folder` really take (sparse files count what was written)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def test_a_legacy_file_is_fetched_over_several_connections_and_repaired_in_the_stream(
    hub: FakeHub, paths: Paths, legacy: Path, repaired_reference: Path
) -> None:
    """Each range goes straight to its place in the merged file: the result is byte for byte
    what the repair of a finished download makes, and the disk never holds a second copy."""
    hub.bytes_per_s = 6e6  # a mirror's per-connection cap: eight connections make it 8x faster
    peak = 0
    messages: list[str] = []

    def watch(report: Progress) -> None:
        nonlocal peak
        peak = max(peak, on_disk(paths.models_dir))
        messages.append(report.message)

    result = download_model(SPEC, paths, endpoint=hub.hub_url, progress=watch)
    final = family_model_path(paths, "huozi3", "q2_k")
    assert result.path == final and result.repaired and result.connections == 8
    assert sha256_of(final) == sha256_of(repaired_reference)
    assert result.sha256 == sha256_of(legacy)  # the original's, checked in its own byte order
    sidecar = read_sidecar(final)
    assert sidecar["state"] == "repaired" and sidecar["sha256"] == sha256_of(legacy)
    assert any("repaired while downloading" in change for change in sidecar["changes"])
    assert hub.most_at_once >= 4  # really several connections at once
    gets = hub.requests_for("GET", "/lfs/")
    assert all(g.range and g.status == 206 for g in gets)
    assert peak <= final.stat().st_size + 64 * MiB  # never the original beside its repair
    assert any("connections" in m for m in messages)  # the speed line says how many
    assert not any(p.exists() for p in InPlaceFiles(final).all())
    assert sorted(p.name for p in final.parent.iterdir()) == [FILE, FILE + ".json"]


def test_a_server_that_ignores_ranges_gets_one_stream(
    hub: FakeHub, paths: Paths, legacy: Path, repaired_reference: Path
) -> None:
    hub.ignore_range = True
    result = download_model(SPEC, paths, endpoint=hub.hub_url)
    assert sha256_of(result.path) == sha256_of(repaired_reference)
    assert read_sidecar(result.path)["state"] == "repaired"
    assert not any(p.exists() for p in InPlaceFiles(result.path).all())


def test_429_backs_off_with_fewer_connections(hub: FakeHub, paths: Paths, legacy: Path) -> None:
    hub.busy_times, hub.busy_from = 4, 8 * MiB  # past the header: the parallel part
    result = download_model(SPEC, paths, endpoint=hub.hub_url)
    assert result.connections < 8  # one fewer for each "slow down"
    assert len([r for r in hub.requests_for("GET", "/lfs/") if r.status == 429]) == 4
    assert read_sidecar(result.path)["sha256"] == sha256_of(legacy)


def test_a_corrupted_range_is_caught_and_nothing_looks_finished(hub: FakeHub, paths: Paths) -> None:
    hub.corrupt = True  # one byte flipped in the middle of the file
    with pytest.raises(HuoziError, match="corrupt"):
        download_model(SPEC, paths, endpoint=hub.hub_url)
    final = family_model_path(paths, "huozi3", "q2_k")
    assert not final.exists() and not any(p.exists() for p in InPlaceFiles(final).all())


def test_a_file_that_changed_on_the_server_starts_over_and_says_so(
    hub: FakeHub, paths: Paths, tiny_models: TinyModels
) -> None:
    cancel = threading.Event()
    hub.bytes_per_s = 4e6

    def stop_soon(report: Progress) -> None:
        if report.stage == "download" and report.done > 4 * MiB:
            cancel.set()

    with pytest.raises(Cancelled):
        download_model(SPEC, paths, endpoint=hub.hub_url, progress=stop_soon, cancel=cancel)
    final = family_model_path(paths, "huozi3", "q2_k")
    assert InPlaceFiles(final).bytes_recorded() > 0
    newer = tiny_models.get("split", "q2_k", rig="chat")  # the hub now serves other bytes
    hub.bytes_per_s = None
    hub.add_file(HUOZI_REPO, FILE, newer)
    said: list[str] = []
    result = download_model(
        SPEC, paths, endpoint=hub.hub_url, progress=lambda p: said.append(p.message)
    )
    assert "the file changed on the server: starting over" in said
    assert result.resumed_from == 0 and result.sha256 == sha256_of(newer)


DOWNLOAD = """
import sys
from huozi_local.cli import main
sys.exit(main(["download", "huozi3:q2_k", "--endpoint", sys.argv[1]]))
"""


def test_kill_9_mid_download_then_a_rerun_fetches_only_what_is_missing(
    hub: FakeHub, paths: Paths, legacy: Path, repaired_reference: Path, huozi_home: Path
) -> None:
    size = legacy.stat().st_size
    hub.bytes_per_s = 20e6
    hub.stall_after_bytes = size // 2  # the download hangs half way, where it is killed
    child = subprocess.Popen(
        [sys.executable, "-c", DOWNLOAD, hub.hub_url],
        env={**os.environ, "HUOZI_HOME": str(huozi_home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    final = family_model_path(paths, "huozi3", "q2_k")
    try:
        deadline = time.monotonic() + 120
        while InPlaceFiles(final).bytes_recorded() < size // 2 - 2 * MiB:
            assert time.monotonic() < deadline, "the download never got half way"
            assert child.poll() is None
            time.sleep(0.05)
        time.sleep(0.6)  # a durable point with every byte received so far
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    hub.bytes_per_s = 200e6  # still paced, so every byte sent is counted
    hub.stall_after_bytes = None
    result = download_model(SPEC, paths, endpoint=hub.hub_url)
    assert result.resumed_from >= size // 2 - 2 * MiB
    assert sha256_of(result.path) == sha256_of(repaired_reference)
    assert hub.sent_so_far() <= 1.1 * size  # both runs together


class _NoRedirect(HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the client follows redirects itself, through the proxy again


DIRECT = build_opener(ProxyHandler({}), _NoRedirect())
"""The proxy's own way out: no proxy (it would call itself), no redirects followed."""


class ForwardingProxy(BaseHTTPRequestHandler):
    """An HTTP proxy for absolute-URI requests (GET and HEAD), counting what it forwarded."""

    seen: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def _forward(self) -> None:
        type(self).seen.append(f"{self.command} {self.path} {self.headers.get('Range')}")
        skip = ("host", "proxy-connection")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        request = Request(self.path, headers=headers, method=self.command)
        try:
            with DIRECT.open(request, timeout=60) as upstream:
                status, reply_headers = upstream.status, upstream.getheaders()
                body = upstream.read()
        except HTTPError as exc:  # a 302 or an error: relayed as the hub said it
            status, reply_headers, body = exc.code, list(exc.headers.items()), exc.read()
        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def test_proxies_from_the_environment_still_carry_the_download(
    hub: FakeHub, paths: Paths, legacy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ForwardingProxy.seen = []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), ForwardingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{proxy.server_address[1]}"
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, address)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "")
        result = download_model(SPEC, paths, endpoint=hub.hub_url, connections=4)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert read_sidecar(result.path)["sha256"] == sha256_of(legacy)
    ranged = [line for line in ForwardingProxy.seen if "/lfs/" in line and "bytes=" in line]
    assert len(ranged) >= 4  # the ranges went through the proxy


def test_download_json_reports_bytes_seconds_and_connections(
    hub: FakeHub, paths: Paths, legacy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from huozi_local.cli import main

    assert main(["download", SPEC, "--endpoint", hub.hub_url, "--connections", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("huozi-local: --connections must be") and err.count("\n") == 1
    code = main(["download", SPEC, "--endpoint", hub.hub_url, "--connections", "3", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["connections"], report["bytes_downloaded"]) == (3, legacy.stat().st_size)
    assert report["repaired"] and report["seconds"] > 0 and report["resumed_from"] == 0
    assert hub.most_at_once <= 3


def test_a_repair_in_the_stream_that_fails_its_check_is_deleted_not_kept(
    hub: FakeHub, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download's sha256 can match while the file written from it is wrong (here: one
    tensor name changed as the new header is written). The re-read catches it, and the files go:
    kept, a rerun would find every range done and fail the same way for ever."""
    from huozi_local.core.fetch import in_place
    from huozi_local.core.gguf.rewrite import pwrite_all as real_pwrite_all

    def damaging_pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
        if offset == 0:
            data = bytes(data).replace(b"blk.0.ffn_gate_exps", b"blk.0.ffn_gatx_exps")
        real_pwrite_all(fd, data, offset)

    monkeypatch.setattr(in_place, "pwrite_all", damaging_pwrite_all)
    with pytest.raises(HuoziError, match=r"failed verification.*the download was deleted"):
        download_model(SPEC, paths, endpoint=hub.hub_url)
    final = family_model_path(paths, "huozi3", "q2_k")
    assert not final.exists() and not any(p.exists() for p in InPlaceFiles(final).all())
