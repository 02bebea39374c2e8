"""Downloads against a fake hub on 127.0.0.1, through the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import FakeHub, closed_port_url, running_hub

from huozi_local.cli import main
from huozi_local.core import disk
from huozi_local.core.config import Paths
from huozi_local.core.errors import Cancelled, HuoziError
from huozi_local.core.fetch.download import download_model
from huozi_local.core.fetch.in_place import InPlaceFiles
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    hf_model_path,
    original_copy_path,
    partial_download_path,
    read_sidecar,
)
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.progress import Progress
from huozi_local.testing.tiny_model import TinyModels, write_plain_gguf

REPO = "someone/plain-GGUF"
FILE = "plain-model.gguf"
SPEC = f"hf:{REPO}/{FILE}"
HUOZI_REPO = "HIT-SCIR/huozi3-gguf"


@pytest.fixture(scope="module")
def plain_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plain_gguf(tmp_path_factory.mktemp("plain") / FILE)


@pytest.fixture(scope="module")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Several transfer buffers long, so a cancel can land between two of them."""
    return write_plain_gguf(tmp_path_factory.mktemp("big") / "big.gguf", 24 << 20, seed=1)


@pytest.fixture
def hub(plain_gguf: Path, big_gguf: Path) -> Iterator[FakeHub]:
    with running_hub() as fake:
        fake.add_file(REPO, FILE, plain_gguf)
        fake.add_file(REPO, "big.gguf", big_gguf)
        fake.add_file(REPO, "README.md", b"# a plain model\n")
        yield fake


@pytest.fixture
def paths(huozi_home: Path) -> Paths:
    return Paths.from_env()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_normal_download_lands_verified_with_a_sidecar(
    hub: FakeHub, paths: Paths, plain_gguf: Path
) -> None:
    reports: list[Progress] = []
    result = download_model(SPEC, paths, endpoint=hub.hub_url, progress=reports.append)
    final = hf_model_path(paths, REPO, FILE)
    assert result.path == final
    assert final.read_bytes() == plain_gguf.read_bytes()
    assert result.sha256 == sha256_of(plain_gguf)
    assert (result.bytes_downloaded, result.resumed_from, result.repaired) == (
        plain_gguf.stat().st_size,
        0,
        False,
    )
    sidecar = read_sidecar(final)
    assert sidecar["state"] == "verified"
    assert (sidecar["repo_id"], sidecar["filename"]) == (REPO, FILE)
    assert sidecar["sha256"] == result.sha256
    stages = [r.stage for r in reports]
    assert stages[0] == "download" and stages[-1] == "verify"
    assert reports[-1].done == reports[-1].total == plain_gguf.stat().st_size
    assert not partial_download_path(paths, "hf", REPO, FILE).exists()
    # Nothing the hub sent advertised xet storage, and the listing was cached for offline use.
    assert not hub.requests_for("GET", "/xet")
    assert (paths.cache_dir / "hub" / "hf" / "someone--plain-GGUF.json").exists()


def test_second_download_of_a_verified_file_moves_no_bytes(hub: FakeHub, paths: Paths) -> None:
    download_model(SPEC, paths, endpoint=hub.hub_url)
    before = len(hub.requests_for("GET", "/lfs/"))
    again = download_model(SPEC, paths, endpoint=hub.hub_url)
    assert again.already_present and again.bytes_downloaded == 0
    assert len(hub.requests_for("GET", "/lfs/")) == before


def _span(record_range: str | None) -> tuple[int, int]:
    assert record_range is not None
    start, _, end = record_range.removeprefix("bytes=").partition("-")
    return int(start), int(end) + 1


def test_connection_cut_mid_file_resumes_with_a_range_request(
    hub: FakeHub, paths: Paths, plain_gguf: Path
) -> None:
    size = plain_gguf.stat().st_size
    hub.cut_after_bytes, hub.cut_times = 100_000, 3  # three answers stop short
    result = download_model(SPEC, paths, endpoint=hub.hub_url, connections=1)
    assert result.path.read_bytes() == plain_gguf.read_bytes()
    gets = hub.requests_for("GET", "/lfs/")
    cut = [g for g in gets if g.body_bytes < _span(g.range)[1] - _span(g.range)[0]]
    assert len(cut) == 3
    for dropped in cut:  # each one was asked again from the byte where it stopped
        resumed_at = _span(dropped.range)[0] + dropped.body_bytes
        assert any(_span(g.range)[0] == resumed_at for g in gets)
    assert all(g.status == 206 for g in gets)
    assert hub.body_bytes_sent() == size  # nothing was fetched twice


@pytest.mark.parametrize("way", ["ranges", "server ignores ranges", "--keep-original"])
def test_corrupt_bytes_are_detected_and_never_marked_complete(
    hub: FakeHub, paths: Paths, capsys: pytest.CaptureFixture[str], way: str
) -> None:
    """Each way a file can arrive: several connections, or one stream when the server ignores
    ranges or the original is kept."""
    hub.corrupt = True
    hub.ignore_range = way == "server ignores ranges"
    keep = ["--keep-original"] if way == "--keep-original" else []
    code, _, err = run_cli(capsys, "download", SPEC, "--endpoint", hub.hub_url, *keep)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "corrupt" in err and "run the command again" in err
    assert not hf_model_path(paths, REPO, FILE).exists()
    assert not partial_download_path(paths, "hf", REPO, FILE).exists()
    hub.corrupt = False
    result = download_model(SPEC, paths, endpoint=hub.hub_url)
    assert read_sidecar(result.path)["state"] == "verified"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:nobody/no-such-repo/x.gguf", "repository nobody/no-such-repo not found"),
        (f"hf:{REPO}/missing.gguf", "missing.gguf not found in someone/plain-GGUF"),
    ],
)
def test_missing_repo_or_file_is_one_line_and_exit_2(
    hub: FakeHub, huozi_home: Path, capsys: pytest.CaptureFixture[str], spec: str, expected: str
) -> None:
    code, _, err = run_cli(capsys, "download", spec, "--endpoint", hub.hub_url)
    assert code == 2
    assert err.count("\n") == 1 and expected in err
    assert not hub.requests_for("GET", "/lfs/")


def test_no_network_is_one_line_and_exit_2(
    huozi_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "download", SPEC, "--endpoint", closed_port_url())
    assert code == 2
    assert err.count("\n") == 1
    assert "cannot reach" in err and "connection refused" in err and "HF_ENDPOINT" in err


def test_gated_repo_asks_for_hf_token_and_token_opens_it(
    hub: FakeHub, paths: Paths, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.gated[REPO] = "hf_secret"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    code, _, err = run_cli(capsys, "download", SPEC, "--endpoint", hub.hub_url)
    assert code == 2 and err.count("\n") == 1 and "HF_TOKEN" in err
    result = download_model(SPEC, paths, endpoint=hub.hub_url, token="hf_secret")
    assert result.path.exists()
    # The token went to the hub, never to the CDN that served the bytes.
    assert hub.requests_for("HEAD", "/resolve/")[-1].authorization == "Bearer hf_secret"
    assert all(r.authorization is None for r in hub.requests_for("GET", "/lfs/"))


def test_too_small_disk_is_refused_before_any_byte(
    hub: FakeHub, paths: Paths, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk, "free_disk_bytes", lambda folder: 1_000_000)
    code, _, err = run_cli(capsys, "download", SPEC, "--endpoint", hub.hub_url)
    assert code == 2 and err.count("\n") == 1
    assert "not enough disk space" in err and "1.00 MB free" in err
    assert not hub.requests_for("GET", "/lfs/")
    assert not hub.requests_for("GET", "/resolve/")
    assert not partial_download_path(paths, "hf", REPO, FILE).exists()


def test_a_legacy_file_needs_room_for_one_copy_unless_the_server_ignores_ranges(
    paths: Paths, tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repaired in the stream, a legacy file never exists twice; only the one-stream fallback
    (a server that ignores Range) still writes the original, then its repaired copy."""
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    size = legacy.stat().st_size
    monkeypatch.setattr(disk, "free_disk_bytes", lambda folder: size + size // 2)
    with running_hub() as fake:
        fake.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", legacy)
        result = download_model("huozi3:q2_k", paths, endpoint=fake.hub_url)
        assert result.repaired and read_sidecar(result.path)["state"] == "repaired"
        result.path.unlink()
        fake.ignore_range = True
        with pytest.raises(HuoziError, match="plus its repaired copy"):
            download_model("huozi3:q2_k", paths, endpoint=fake.hub_url)


def test_offline_with_the_file_on_disk_touches_no_network(
    hub: FakeHub, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = download_model(SPEC, paths, endpoint=hub.hub_url)
    seen = len(hub.records)
    again = download_model(SPEC, paths, endpoint=hub.hub_url, offline=True)
    assert again.path == first.path and again.already_present
    assert len(hub.records) == seen
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    via_env = download_model(SPEC, paths, endpoint=closed_port_url())
    assert via_env.path == first.path
    assert len(hub.records) == seen


def test_offline_without_the_file_says_what_is_missing(
    hub: FakeHub, paths: Paths, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(capsys, "download", SPEC, "--offline", "--endpoint", hub.hub_url)
    assert code == 2 and err.count("\n") == 1
    assert "offline" in err and FILE in err and "is not on this disk" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "download", "huozi3:q4_0", "--endpoint", hub.hub_url)
    assert code == 2 and "huozi3-q4_0.gguf" in err and "not on this disk" in err
    assert hub.records == []


def test_offline_with_a_partial_file_says_how_far_it_got(hub: FakeHub, paths: Paths) -> None:
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        download_model(
            SPEC, paths, endpoint=hub.hub_url, cancel=cancel, progress=lambda p: cancel.set()
        )
    with pytest.raises(HuoziError, match="only partly downloaded"):
        download_model(SPEC, paths, endpoint=hub.hub_url, offline=True)


def test_cancel_mid_download_keeps_the_bytes_and_the_next_run_resumes(
    hub: FakeHub, paths: Paths, big_gguf: Path
) -> None:
    spec = f"hf:{REPO}/big.gguf"
    size = big_gguf.stat().st_size
    cancel = threading.Event()

    def stop_after_first_bytes(report: Progress) -> None:
        if report.stage == "download" and report.done > 0:
            cancel.set()

    hub.bytes_per_s = 8e6  # three seconds for the file: the cancel lands well before its end

    with pytest.raises(Cancelled, match="run the same command to resume"):
        download_model(
            spec,
            paths,
            endpoint=hub.hub_url,
            cancel=cancel,
            progress=stop_after_first_bytes,
            connections=1,
        )
    final = hf_model_path(paths, REPO, "big.gguf")
    kept = InPlaceFiles(final).bytes_recorded()  # what the resume record says is on the disk
    assert 0 < kept < size
    assert not final.exists()
    while hub.sending:  # the server stops writing to the closed connection
        time.sleep(0.01)
    first_run = hub.body_bytes_sent()
    hub.bytes_per_s = None
    result = download_model(spec, paths, endpoint=hub.hub_url, connections=1)
    assert result.resumed_from == kept
    assert result.bytes_downloaded == size - kept
    assert result.path.read_bytes() == big_gguf.read_bytes()
    # The second run asked for, and got, only the bytes that were missing.
    assert hub.body_bytes_sent() - first_run == size - kept
    assert not any(p.exists() for p in InPlaceFiles(final).all())


def test_a_stale_part_of_another_file_version_is_not_resumed(
    hub: FakeHub, paths: Paths, plain_gguf: Path
) -> None:
    part = partial_download_path(paths, "hf", REPO, FILE)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"old bytes of another version")
    part.with_name(part.name + ".json").write_text('{"sha256": "0", "size": 1, "repo_id": "x"}')
    result = download_model(SPEC, paths, endpoint=hub.hub_url)
    assert result.resumed_from == 0
    assert result.path.read_bytes() == plain_gguf.read_bytes()


def test_manifest_sha256_disagreeing_with_the_hub_is_refused(
    paths: Paths, plain_gguf: Path
) -> None:
    with running_hub() as fake:
        fake.add_file(HUOZI_REPO, "huozi3-q4_0.gguf", plain_gguf)
        with pytest.raises(HuoziError, match="this huozi-local knows"):
            download_model("huozi3:q4_0", paths, endpoint=fake.hub_url)
        assert not fake.requests_for("GET", "/lfs/")


def test_modelscope_without_the_package_says_how_to_install_it(
    huozi_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)  # as if it were not installed
    code, _, err = run_cli(capsys, "download", "huozi3:q2_k", "--source", "modelscope")
    assert code == 2 and err.count("\n") == 1
    assert "pipx inject huozi-local modelscope" in err and "huozi-local[modelscope]" in err


@pytest.mark.slow
@pytest.mark.parametrize("keep_original", [False, True])
def test_legacy_model_is_downloaded_repaired_and_chats(
    paths: Paths, tiny_models: TinyModels, keep_original: bool
) -> None:
    from huozi_local.core.chat.engine import LlamaEngine
    from huozi_local.core.chat.loader import LoadOptions
    from huozi_local.core.chat.types import ChatMessage, collect_reply
    from huozi_local.testing.tiny_model import RIG_TEXT

    legacy = tiny_models.get("split", "q4_0", rig="chat")
    stages: list[str] = []
    with running_hub() as fake:
        fake.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", legacy)
        result = download_model(
            "huozi3:q2_k",
            paths,
            endpoint=fake.hub_url,
            keep_original=keep_original,
            progress=lambda p: stages.append(p.stage),
        )
    final = family_model_path(paths, "huozi3", "q2_k")
    assert result.path == final and result.repaired
    assert result.sha256 == sha256_of(legacy)
    # Repaired in the stream; with --keep-original the original is kept, then repaired.
    expected = ["download", "verify", "repair"] if keep_original else ["download", "verify"]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == expected
    assert read_gguf(final).layout == "merged" and not read_gguf(final).load_blockers()
    sidecar = read_sidecar(final)
    assert sidecar["state"] == "repaired" and sidecar["sha256"] == sha256_of(legacy)
    assert any("merged" in change for change in sidecar["changes"])
    assert not partial_download_path(paths, "hf", HUOZI_REPO, "huozi3-q2_k.gguf").exists()
    original = original_copy_path(paths, HUOZI_REPO, "huozi3-q2_k.gguf")
    assert original.exists() == keep_original
    if keep_original:
        assert result.original_path == original and sha256_of(original) == result.sha256

    # The downloaded, repaired file chats through the engine every front end uses.
    engine = LlamaEngine.load(final, LoadOptions(n_ctx=256))
    try:
        reply = collect_reply(engine.stream_reply([ChatMessage("user", "你好")]))
    finally:
        engine.close()
    assert (reply.text, reply.stop_reason) == (RIG_TEXT, "stop")


def test_community_family_resolves_files_from_the_hub_listing(
    paths: Paths, plain_gguf: Path
) -> None:
    with running_hub() as fake:
        fake.add_file("mradermacher/huozi3.5-GGUF", "huozi3.5.Q4_K_M.gguf", plain_gguf)
        fake.add_file("mradermacher/huozi3.5-GGUF", "huozi3.5.IQ3_XS.gguf", plain_gguf)
        result = download_model("huozi3.5:iq3_xs", paths, endpoint=fake.hub_url)
    assert result.path == family_model_path(paths, "huozi3.5", "iq3_xs")
    assert result.path.read_bytes() == plain_gguf.read_bytes()
