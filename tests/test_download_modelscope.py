"""`--source modelscope` against a fake ModelScope site on 127.0.0.1, through the real client.

The real modelscope client (modelscope-hub) lists the repo and builds the download URL; our own
transfer moves the bytes, so resume and sha256 verification must behave exactly as for the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import closed_port_url
from modelscope_server import FakeHub, running_modelscope

from huozi_local.cli import main
from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch.download import download_model
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    hf_model_path,
    original_copy_path,
    partial_download_path,
    read_sidecar,
)
from huozi_local.core.fetch.modelscope import resolve_endpoint
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.progress import Progress
from huozi_local.testing.tiny_model import TinyModels, write_plain_gguf

REPO = "someone/plain-GGUF"
FILE = "plain-model.gguf"
SPEC = f"hf:{REPO}/{FILE}"
HUOZI_REPO = "HIT-SCIR/huozi3-gguf"
HUOZI_FILE = "huozi3-q2_k.gguf"
MS_ENV = (
    "MODELSCOPE_ENDPOINT",
    "MODELSCOPE_DOMAIN",
    "MODELSCOPE_API_TOKEN",
    "MODELSCOPE_LOG_LEVEL",
)


@pytest.fixture(autouse=True)
def modelscope_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The modelscope client writes a session file under its home: keep it out of the real one."""
    for name in MS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "modelscope-home"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope-cache"))


@pytest.fixture(scope="module")
def plain_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plain_gguf(tmp_path_factory.mktemp("plain-ms") / FILE)


@pytest.fixture
def site(plain_gguf: Path) -> Iterator[FakeHub]:
    with running_modelscope() as fake:
        fake.add_file(REPO, FILE, plain_gguf)
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


def run_cli_process(
    endpoint: str, *argv: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m huozi_local` in a fresh process, the endpoint given only through the env."""
    env = {**os.environ, "MODELSCOPE_ENDPOINT": endpoint, **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "huozi_local", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_download_is_verified_against_the_listing_sha256(
    site: FakeHub, paths: Paths, plain_gguf: Path
) -> None:
    reports: list[Progress] = []
    result = download_model(
        SPEC, paths, source="modelscope", endpoint=site.hub_url, progress=reports.append
    )
    final = hf_model_path(paths, REPO, FILE)
    assert result.path == final and final.read_bytes() == plain_gguf.read_bytes()
    assert result.sha256 == sha256_of(plain_gguf)
    assert reports[-1] == Progress(
        "verify", final.stat().st_size, final.stat().st_size, "sha256 matches"
    )
    sidecar = read_sidecar(final)
    assert (sidecar["state"], sidecar["source"], sidecar["sha256"]) == (
        "verified",
        "modelscope",
        result.sha256,
    )
    # The real client listed the repo; the download went through its URL, redirected to the CDN.
    assert [r.status for r in site.requests_for("GET", f"/api/v1/models/{REPO}/repo/files")] == [
        200
    ]
    assert [r.status for r in site.requests_for("GET", f"/api/v1/models/{REPO}/repo")] == [
        200,
        302,
    ]
    assert {r.status for r in site.requests_for("GET", "/lfs/")} == {206}  # ranges
    cached = paths.cache_dir / "hub" / "modelscope" / "someone--plain-GGUF.json"
    listed = {f["filename"]: f for f in json.loads(cached.read_text(encoding="utf-8"))["files"]}
    assert listed[FILE]["sha256"] == result.sha256 and listed[FILE]["size"] == len(
        plain_gguf.read_bytes()
    )
    assert not partial_download_path(paths, "modelscope", REPO, FILE).exists()


def test_connection_cut_mid_file_resumes_with_a_range_request(
    site: FakeHub, paths: Paths, plain_gguf: Path
) -> None:
    size = plain_gguf.stat().st_size
    site.cut_after_bytes, site.cut_times = 300_000, 2
    result = download_model(SPEC, paths, source="modelscope", endpoint=site.hub_url, connections=1)
    assert result.path.read_bytes() == plain_gguf.read_bytes()
    assert read_sidecar(result.path)["state"] == "verified"
    gets = site.requests_for("GET", "/lfs/")
    # The Range header survived the redirect from the download URL to the CDN, and the rest
    # went straight to the CDN's URL.
    assert str(gets[0].range).startswith("bytes=0-") and {g.status for g in gets} == {206}
    assert len(site.requests_for("GET", f"/api/v1/models/{REPO}/repo")) <= 2
    assert site.body_bytes_sent() == size  # nothing was fetched twice


def test_corrupt_bytes_are_detected_and_never_marked_complete(
    site: FakeHub,
    paths: Paths,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", site.hub_url)
    site.corrupt = True
    code, _, err = run_cli(capsys, "download", SPEC, "--source", "modelscope")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "corrupt" in err and "run the command again" in err
    assert not hf_model_path(paths, REPO, FILE).exists()
    assert not partial_download_path(paths, "modelscope", REPO, FILE).exists()
    site.corrupt = False
    result = download_model(SPEC, paths, source="modelscope")
    assert read_sidecar(result.path)["state"] == "verified"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, f"repository {HUOZI_REPO} not found on http://127.0.0.1:"),
        ({"README.md": b"# huozi\n"}, f"{HUOZI_FILE} not found in {HUOZI_REPO}"),
    ],
    ids=["missing-repo", "missing-file"],
)
def test_missing_repo_or_file_is_one_line_and_exit_2(
    huozi_home: Path, files: dict[str, bytes], expected: str
) -> None:
    with running_modelscope() as fake:
        for name, content in files.items():
            fake.add_file(HUOZI_REPO, name, content)
        done = run_cli_process(fake.hub_url, "download", "huozi3:q2_k", "--source", "modelscope")
        assert fake.requests_for("GET", "/repo/files"), "the real client was never asked"
        assert not fake.requests_for("GET", "/lfs/")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr


def test_unreachable_site_is_one_line_and_exit_2(huozi_home: Path) -> None:
    endpoint = closed_port_url()
    # The client retries a refused listing with 1+2+4 s of backoff; one attempt shows the same.
    done = run_cli_process(
        endpoint,
        "download",
        "huozi3:q2_k",
        "--source",
        "modelscope",
        extra_env={"MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert f"cannot reach {endpoint} (connection refused)" in done.stderr
    assert "MODELSCOPE_ENDPOINT" in done.stderr


def test_offline_uses_the_cached_listing_and_the_file_on_disk(
    site: FakeHub, paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = download_model(SPEC, paths, source="modelscope", endpoint=site.hub_url)
    seen = len(site.records)
    monkeypatch.setitem(sys.modules, "modelscope", None)  # offline needs no client at all
    again = download_model(SPEC, paths, source="modelscope", endpoint=site.hub_url, offline=True)
    assert again.already_present and again.path == first.path
    assert len(site.records) == seen
    with pytest.raises(HuoziError, match=r"offline: .*missing\.gguf.* is not on this disk"):
        download_model(f"hf:{REPO}/missing.gguf", paths, source="modelscope", offline=True)


def test_modelscope_without_its_hub_client_asks_for_a_newer_one(
    huozi_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "modelscope_hub", None)  # modelscope older than 1.40
    code, _, err = run_cli(capsys, "download", "huozi3:q2_k", "--source", "modelscope")
    assert code == 2 and err.count("\n") == 1
    assert "modelscope 1.40 or newer" in err and "pipx inject huozi-local" in err


def test_endpoint_is_explicit_then_modelscope_endpoint_then_domain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_endpoint() == "https://www.modelscope.cn"
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "mirror.example.cn")
    assert resolve_endpoint() == "https://mirror.example.cn"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9/")
    assert resolve_endpoint() == "http://127.0.0.1:9"
    assert resolve_endpoint("https://modelscope.ai") == "https://modelscope.ai"


@pytest.mark.slow
def test_legacy_model_is_downloaded_and_repaired(paths: Paths, tiny_models: TinyModels) -> None:
    legacy = tiny_models.get("split", "q4_0", rig="chat")
    stages: list[str] = []
    with running_modelscope() as fake:
        fake.add_file(HUOZI_REPO, HUOZI_FILE, legacy)
        result = download_model(
            "huozi3:q2_k",
            paths,
            source="modelscope",
            endpoint=fake.hub_url,
            progress=lambda p: stages.append(p.stage),
            connections=1,
        )
        assert fake.body_bytes_sent() == legacy.stat().st_size
    final = family_model_path(paths, "huozi3", "q2_k")
    assert result.path == final and result.repaired
    assert result.sha256 == sha256_of(legacy)
    # repaired in the stream: no separate pass
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        "download",
        "verify",
    ]
    repaired = read_gguf(final)
    assert repaired.layout == "merged" and not repaired.load_blockers()
    sidecar = read_sidecar(final)
    assert (sidecar["state"], sidecar["source"]) == ("repaired", "modelscope")
    assert sidecar["sha256"] == sha256_of(legacy)
    assert not partial_download_path(paths, "modelscope", HUOZI_REPO, HUOZI_FILE).exists()
    assert not original_copy_path(paths, HUOZI_REPO, HUOZI_FILE).exists()
