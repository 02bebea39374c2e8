"""`huozi-local import`: a file already on disk becomes a model every command finds.

Real tiny huozi models in both layouts, the real repair, real hard links and renames on the test's
own file system, and the real engine for the chat that proves the import is usable.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from huozi_local.cli import main
from huozi_local.core.config import Paths, Settings
from huozi_local.core.errors import Cancelled, GGUFError
from huozi_local.core.fetch import adopt
from huozi_local.core.fetch.adopt import copy_file, import_model
from huozi_local.core.fetch.inventory import model_states
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    imported_model_path,
    read_sidecar,
    resolve_local_model,
    write_sidecar,
)
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.gguf.repair import repair_gguf
from huozi_local.core.progress import Progress
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels, copy_model, write_plain_gguf


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(path: Path) -> tuple[str, int, int]:
    """Content, size and modification time: "never changed" means all three."""
    stat = path.stat()
    return sha256_of(path), stat.st_size, stat.st_mtime_ns


def leftovers(paths: Paths) -> list[str]:
    """Anything under the models folder that is not a finished model or its sidecar."""
    return sorted(
        str(p.relative_to(paths.models_dir))
        for p in paths.models_dir.rglob("*")
        if p.is_file() and not p.name.endswith((".gguf", ".gguf.json"))
    )


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def paths(huozi_home: Path) -> Paths:
    return Paths.from_env()


@pytest.mark.slow
def test_legacy_file_is_repaired_in_registered_and_chats(
    paths: Paths, tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    src = copy_model(tiny_models.get("split", "q4_0", rig="chat"), tmp_path / "dl" / "huozi3.gguf")
    before = fingerprint(src)

    code, out, err = run_cli(capsys, "import", str(src))

    assert code == 0, err
    final = family_model_path(paths, "huozi3", "q4_0")
    assert fingerprint(src) == before  # the user's file is only read
    repaired = read_gguf(final)
    assert repaired.layout == "merged" and not repaired.turn_fixes_needed()
    sidecar = read_sidecar(final)
    assert sidecar["method"] == "repaired" and sidecar["sha256"] == before[0]
    # Its sha256 is not the official q4_0's: identified by the header, not claimed as verified.
    assert sidecar["state"] == "imported" and "not the official file" in sidecar["identified_by"]
    assert "identified: huozi3:q4_0" in out and "repaired" in out
    assert leftovers(paths) == []

    # Registered: the default model, listed by `models`, and `ask` uses it without --model.
    assert Settings.load(paths.config_file).model == "huozi3:q4_0"
    assert resolve_local_model(None, paths).path == final
    listed = {s.spec: s.state for s in model_states(paths, offline=True)}
    assert listed["huozi3:q4_0"] == "imported"
    code, out, err = run_cli(capsys, "ask", "你好", "--temp", "0", "--max-tokens", "16")
    assert code == 0, err
    assert out.strip() == RIG_TEXT

    # The same file again: nothing to do.
    code, out, _ = run_cli(capsys, "import", str(src))
    assert code == 0 and "already imported" in out


@pytest.mark.slow
def test_the_official_file_is_recognised_by_its_sha256(
    paths: Paths, tmp_path: Path, tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tiny_models.get("split", "q4_0")
    # Pretend the manifest publishes this tiny file's sha256, as it does the real q4_0's.
    official = sha256_of(src)
    monkeypatch.setattr(adopt, "_known_sha", lambda identity, paths: official)
    stages: list[str] = []

    result = import_model(src, paths, progress=lambda p: stages.append(p.stage))

    assert result.identity.official and result.spec == "huozi3:q4_0"
    assert "sha256 matches the official huozi3 q4_0" in result.identity.how
    assert read_sidecar(result.path)["state"] == "repaired"
    assert set(stages) == {"repair"}  # hashed during the repair's read, no separate pass
    states = {s.spec: s.state for s in model_states(paths, offline=True)}
    assert states["huozi3:q4_0"] == "repaired"


def test_a_merged_file_on_the_same_disk_is_linked_not_copied(
    paths: Paths, tmp_path: Path, tiny_models: TinyModels
) -> None:
    # A file repaired elsewhere loads as it is: nothing to rewrite, so it is hard-linked.
    merged = repair_gguf(tiny_models.get("merged", "q4_0"), tmp_path / "huozi3-q4_0.gguf").output
    assert merged is not None
    before = fingerprint(merged)

    result = import_model(merged, paths)

    assert result.method == "linked" and result.spec == "huozi3:q4_0"
    assert result.path == family_model_path(paths, "huozi3", "q4_0")
    assert result.path.stat().st_ino == merged.stat().st_ino
    assert fingerprint(merged) == before and merged.exists()
    assert leftovers(paths) == []

    # A downloaded model, imported from where it lies, is left as it is (its record too).
    downloaded = {"source": "hf", "state": "verified", "sha256": "0" * 64}
    write_sidecar(result.path, downloaded)
    again = import_model(result.path, paths)
    assert again.method == "already imported" and read_sidecar(result.path) == downloaded


def test_a_file_of_another_model_keeps_its_name_and_becomes_usable(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_plain_gguf(tmp_path / "other-model.gguf")
    code, out, err = run_cli(capsys, "import", str(src), "--move")
    assert code == 0, err
    final = imported_model_path(paths, "other-model.gguf")
    assert final.exists() and not src.exists()  # moved: a rename on the same file system
    assert read_sidecar(final)["method"] == "moved"
    assert Settings.load(paths.config_file).model == str(final)
    assert "moved" in out
    states = [s for s in model_states(paths, offline=True) if s.path == final]
    assert [(s.family, s.state) for s in states] == [("imported", "imported")]
    Settings().save(paths.config_file)  # forget the default: discovery alone still finds it
    assert resolve_local_model(None, paths).path == final


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        (b"<html>not a model</html>" * 4, "is not a GGUF model file"),
        ("truncated", "is truncated"),
    ],
)
def test_what_is_not_a_model_is_one_line_and_exit_2(
    paths: Paths,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | str | None,
    expected: str,
) -> None:
    src = tmp_path / "model.gguf"
    if content == "truncated":
        whole = write_plain_gguf(tmp_path / "whole.gguf").read_bytes()
        src.write_bytes(whole[: len(whole) // 2])
    elif isinstance(content, bytes):
        src.write_bytes(content)
    code, out, err = run_cli(capsys, "import", str(src))
    assert code == 2 and out == ""
    assert err.startswith("huozi-local: ") and err.count("\n") == 1 and expected in err
    assert not paths.models_dir.exists() or leftovers(paths) == []
    assert Settings.load(paths.config_file).model == ""


def test_cancel_mid_repair_leaves_nothing_that_looks_finished(
    paths: Paths, tiny_models: TinyModels
) -> None:
    src = tiny_models.get("split", "q2_k")
    before = fingerprint(src)
    cancel = threading.Event()

    def stop_after_first(report: Progress) -> None:
        if report.done > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        import_model(src, paths, progress=stop_after_first, cancel=cancel)
    assert not family_model_path(paths, "huozi3", "q2_k").exists()
    assert list(paths.models_dir.rglob("*.gguf")) == []
    assert leftovers(paths) == [] and fingerprint(src) == before


def test_copy_reports_progress_and_cancel_removes_the_partial(tmp_path: Path) -> None:
    src = write_plain_gguf(tmp_path / "big.gguf", 24 << 20)
    target = tmp_path / "out" / "copy.gguf"
    target.parent.mkdir()
    reports: list[Progress] = []
    copy_file(src, target, reports.append)
    assert sha256_of(target) == sha256_of(src)
    assert reports[-1].done == reports[-1].total == src.stat().st_size
    assert all(r.stage == "copy" for r in reports)

    cancel = threading.Event()
    again = tmp_path / "out" / "again.gguf"

    def stop(report: Progress) -> None:
        if report.done > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        copy_file(src, again, stop, cancel)
    assert sorted(os.listdir(target.parent)) == ["copy.gguf"]


def test_a_failed_move_puts_the_users_file_back(
    paths: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_plain_gguf(tmp_path / "other.gguf")
    before = fingerprint(src)

    def broken_sidecar(model_path: Path, data: dict[str, object]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(adopt, "write_sidecar", broken_sidecar)
    with pytest.raises(OSError):
        import_model(src, paths, move=True)
    assert fingerprint(src) == before
    assert list(paths.models_dir.rglob("*.gguf")) == []


def test_a_damaged_header_is_refused_before_anything_is_written(
    paths: Paths, tmp_path: Path
) -> None:
    src = tmp_path / "broken.gguf"
    src.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(GGUFError, match="version"):
        import_model(src, paths)
    assert not paths.models_dir.exists()


@pytest.mark.slow
def test_a_file_the_cached_hub_listing_names_counts_as_downloaded(
    paths: Paths, tiny_models: TinyModels
) -> None:
    """q2_k has no sha256 in the manifest; the hub's listing, cached by an earlier `models` or
    `download`, names it, and then `download` finds the imported file instead of fetching it."""
    from huozi_local.core.fetch.download import download_model
    from huozi_local.core.fetch.hub import RemoteFile, RepoListing, save_listing

    src = tiny_models.get("split", "q2_k")
    repo = "HIT-SCIR/huozi3-gguf"
    entry = RemoteFile(repo, "huozi3-q2_k.gguf", src.stat().st_size, sha256_of(src))
    save_listing(paths, RepoListing(repo, "hf", "main", (entry,), 0.0))

    result = import_model(src, paths)

    assert result.identity.official and result.spec == "huozi3:q2_k"
    assert read_sidecar(result.path)["state"] == "repaired"
    again = download_model("huozi3:q2_k", paths, offline=True)
    assert again.already_present and again.path == result.path
