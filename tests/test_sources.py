"""Which download sources this network reaches: probes against local fakes, and the saved choice
used by `download`. Unreachable means a real refused connection or a real failed name lookup."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import closed_port_url, running_hub
from modelscope_server import running_modelscope

from huozi_local.cli import main
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch.model_folder import hf_model_path
from huozi_local.core.fetch.sources import (
    MIRROR_PRESET,
    DownloadSource,
    ProbeResult,
    SourceKind,
    default_sources,
    download_args,
    first_usable,
    mirror_endpoint,
    probe_source,
    probe_sources,
)
from huozi_local.testing.tiny_model import write_plain_gguf

HUOZI_REPO = "HIT-SCIR/huozi3-gguf"
UNRESOLVABLE = "http://huozi-probe.invalid"  # .invalid never resolves (RFC 2606)


def test_a_hub_that_has_the_model_is_reachable() -> None:
    with running_hub() as hub:
        hub.add_file(HUOZI_REPO, "README.md", b"# huozi\n")
        result = probe_source(DownloadSource(SourceKind.MIRROR, hub.hub_url))
    assert result.reachable and result.usable and result.reason == ""
    assert result.summary.startswith("reachable")


def test_refused_and_unresolvable_hosts_say_why() -> None:
    refused = probe_source(DownloadSource(SourceKind.HF, closed_port_url()))
    assert not refused.reachable and refused.reason == "connection refused"
    assert refused.summary == "not reachable: connection refused"
    unknown = probe_source(DownloadSource(SourceKind.HF, UNRESOLVABLE))
    assert not unknown.reachable and unknown.reason == "host name not found"


def test_a_site_without_the_model_is_not_a_source_for_it() -> None:
    with running_hub() as hub:  # answers, but holds no huozi repository
        result = probe_source(DownloadSource(SourceKind.MIRROR, hub.hub_url))
    assert not result.reachable and result.reason == "answered HTTP 404"


def test_modelscope_reachable_but_without_its_package_names_the_command() -> None:
    with running_modelscope() as site:
        site.add_file(HUOZI_REPO, "README.md", b"# huozi\n")
        source = DownloadSource(SourceKind.MODELSCOPE, site.hub_url)
        with_package = probe_source(source, package_check=lambda: True)
        without = probe_source(source, package_check=lambda: False)
    assert with_package.usable
    assert without.reachable and not without.usable
    assert without.fix == "pipx inject huozi-local modelscope"
    assert "needs: pipx inject huozi-local modelscope" in without.summary


def test_all_sources_at_once_and_the_first_usable_is_chosen() -> None:
    seen: list[ProbeResult] = []
    with running_hub() as hub:
        hub.add_file(HUOZI_REPO, "README.md", b"# huozi\n")
        sources = [
            DownloadSource(SourceKind.HF, closed_port_url()),
            DownloadSource(SourceKind.MIRROR, hub.hub_url),
            DownloadSource(SourceKind.MODELSCOPE, UNRESOLVABLE),
        ]
        results = probe_sources(sources, on_result=seen.append)
    assert [r.source for r in results] == sources  # the order given, whatever order they landed
    assert sorted(id(r) for r in seen) == sorted(id(r) for r in results)
    assert [r.usable for r in results] == [False, True, False]
    assert first_usable(results) == sources[1]
    assert first_usable(results[:1]) is None


def test_a_cancelled_probe_returns_at_once() -> None:
    cancel = threading.Event()
    cancel.set()
    results = probe_sources([DownloadSource(SourceKind.HF, UNRESOLVABLE)], cancel=cancel)
    assert [(r.reachable, r.reason) for r in results] == [(False, "cancelled")]


def test_the_mirror_is_the_saved_one_else_hf_endpoint_else_the_preset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert mirror_endpoint() == MIRROR_PRESET == "https://hf-mirror.com"
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")  # not a mirror
    assert mirror_endpoint() == MIRROR_PRESET
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example.cn/")
    assert mirror_endpoint() == "https://mirror.example.cn"
    assert mirror_endpoint("https://saved.example/") == "https://saved.example"
    kinds = [s.kind for s in default_sources()]
    assert kinds == [SourceKind.HF, SourceKind.MIRROR, SourceKind.MODELSCOPE]


def test_saved_choice_becomes_download_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert download_args("") == ("hf", None)
    assert download_args("hf") == ("hf", None)
    assert download_args("mirror") == ("hf", MIRROR_PRESET)
    assert download_args("mirror", "http://127.0.0.1:9") == ("hf", "http://127.0.0.1:9")
    assert download_args("modelscope") == ("modelscope", None)
    with pytest.raises(HuoziError, match="unknown download source 'ftp'"):
        download_args("ftp")


def test_download_uses_the_source_saved_in_settings(
    huozi_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    model = write_plain_gguf(tmp_path / "plain.gguf")
    paths = Paths.from_env()
    with running_hub() as mirror:
        mirror.add_file("someone/plain-GGUF", "plain.gguf", model)
        Settings(download_source="mirror", mirror_endpoint=mirror.hub_url).save(paths.config_file)
        code = main(["download", "hf:someone/plain-GGUF/plain.gguf"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert mirror.requests_for("GET", "/lfs/")
    assert hf_model_path(paths, "someone/plain-GGUF", "plain.gguf").exists()
    assert "sha256 OK" in out

    # --source on the command line wins over the saved choice: the hub it names is refused.
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    code = main(["download", "hf:someone/plain-GGUF/other.gguf", "--source", "hf"])
    err = capsys.readouterr().err
    assert code == 2 and "connection refused" in err and err.count("\n") == 1
