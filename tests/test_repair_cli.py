"""`huozi-local repair` from the outside: exit codes, one-line errors, kills and full disks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from disks import mounted_tmpfs

from huozi_local.cli import main
from huozi_local.core import disk
from huozi_local.core.gguf.header import read_gguf
from huozi_local.testing.tiny_model import TinyModels, file_sha256


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("huozi-local: ")
    return err


def _legacy_copy(tiny_models: TinyModels, folder: Path, quant: str = "q2_k") -> Path:
    src = folder / "src" / f"huozi3-{quant}.gguf"
    src.parent.mkdir()
    src.write_bytes(tiny_models.get("split", quant).read_bytes())  # type: ignore[arg-type]
    return src


def test_repair_command_prints_changes_then_nothing_to_do(
    tiny_models: TinyModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _legacy_copy(tiny_models, tmp_path)
    assert main(["repair", str(src)]) == 0
    out = capsys.readouterr().out
    assert "merged 96 expert tensors" in out and "eos_token_id 2 -> 57001" in out
    repaired = src.with_name("huozi3-q2_k.repaired.gguf")
    assert f"wrote {repaired}" in out
    assert main(["repair", str(repaired), "-o", str(tmp_path)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(p.name for p in src.parent.iterdir()) == [src.name, repaired.name]


def test_output_into_a_folder(tiny_models: TinyModels, tmp_path: Path) -> None:
    src = _legacy_copy(tiny_models, tmp_path)
    assert main(["repair", str(src), "-o", str(tmp_path)]) == 0
    assert read_gguf(tmp_path / "huozi3-q2_k.repaired.gguf").layout == "merged"


def _unknown_architecture_file(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="mysterynet")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "no such file"),
        ("folder", "is a folder"),
        ("not_gguf", "not a GGUF"),
        ("truncated", "truncated"),
        ("unknown_arch", "architecture 'mysterynet'"),
        ("same_output", "refusing to overwrite"),
        ("no_output_folder", "does not exist"),
        ("unreadable", "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny_models: TinyModels,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    expected: str,
) -> None:
    src = _legacy_copy(tiny_models, tmp_path)
    argv = ["repair", str(tmp_path / "input.gguf"), "-o", str(tmp_path / "out.gguf")]
    target = tmp_path / "input.gguf"
    if case == "folder":
        target.mkdir()
    elif case == "not_gguf":
        target.write_text("just some notes, not a model\n" * 10)
    elif case == "truncated":
        target.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    elif case == "unknown_arch":
        _unknown_architecture_file(target)
    elif case == "same_output":
        argv = ["repair", str(src), "-o", str(src)]
    elif case == "no_output_folder":
        argv = ["repair", str(src), "-o", str(tmp_path / "nowhere" / "out.gguf")]
    elif case == "unreadable":
        # A path through a regular file fails even for root, unlike a chmod 000 file.
        argv = ["repair", str(src / "inner.gguf")]
    before = file_sha256(src)
    assert main(argv) == 2
    assert expected in _one_line_error(capsys)
    assert not (tmp_path / "out.gguf").exists()
    assert not list(tmp_path.glob("*.partial")) and not list(src.parent.glob("*.partial"))
    assert file_sha256(src) == before


def test_not_enough_free_disk_is_refused_before_writing(
    tiny_models: TinyModels,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = _legacy_copy(tiny_models, tmp_path)
    monkeypatch.setattr(disk, "free_disk_bytes", lambda folder: 1_000_000)
    assert main(["repair", str(src), "-o", str(tmp_path / "out.gguf")]) == 2
    err = _one_line_error(capsys)
    assert "not enough disk space" in err and "1.00 MB free" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB filesystem."""
    with mounted_tmpfs(tmp_path / "small-disk", "8m") as mount_point:
        yield mount_point


@pytest.mark.may_skip
def test_a_real_full_disk_mid_write_leaves_nothing(
    tiny_models: TinyModels,
    tmp_path: Path,
    small_tmpfs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = _legacy_copy(tiny_models, tmp_path)
    out = small_tmpfs / "out.gguf"
    assert main(["repair", str(src), "-o", str(out)]) == 2  # refused up front
    assert "not enough disk space" in _one_line_error(capsys)
    # Pretend the check passed (another program freed space, then took it back): the write
    # itself then hits ENOSPC on the real filesystem.
    monkeypatch.setattr(disk, "free_disk_bytes", lambda folder: 1 << 40)
    assert main(["repair", str(src), "-o", str(out)]) == 2
    assert "the disk filled up" in _one_line_error(capsys)
    assert list(small_tmpfs.iterdir()) == []


def test_file_size_limit_mid_write_is_a_one_line_disk_error(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes writes fail with EFBIG partway, like a disk filling up."""
    import resource

    src = _legacy_copy(tiny_models, tmp_path)
    out = tmp_path / "out"
    out.mkdir()

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (5_000_000, 5_000_000))

    done = subprocess.run(
        [sys.executable, "-m", "huozi_local", "repair", str(src), "-o", str(out)],
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the disk filled up" in lines[0]
    assert list(out.iterdir()) == []


KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from huozi_local.core import progress
    from huozi_local.core.gguf.repair import repair_gguf

    original = progress.ThrottledProgress.update

    def update(self, done, message="", *, force=False):
        # Every chunk reaches here (reports to the callback are throttled by time, this is not),
        # so the child stops after its first chunk however fast the disk is.
        original(self, done, message, force=force)
        if 0 < done < (self._total or 0):
            print("halfway", flush=True)
            time.sleep(600)  # wait here to be killed

    progress.ThrottledProgress.update = update
    repair_gguf(Path(sys.argv[1]), Path(sys.argv[2]), progress=lambda report: None)
    """
)


def test_sigkill_mid_repair_leaves_no_finished_looking_file(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    src = _legacy_copy(tiny_models, tmp_path, "f32")
    before = file_sha256(src)
    dst = tmp_path / "out.gguf"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(src), str(dst)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "halfway"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["out.gguf.partial"]
    assert file_sha256(src) == before
    # The next run replaces the leftover.
    assert main(["repair", str(src), "-o", str(dst)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "src"]


CTRL_C_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from huozi_local.core import progress

    original = progress.ThrottledProgress.update

    def update(self, done, message="", *, force=False):
        original(self, done, message, force=force)
        if done > 0:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C mid-repair

    progress.ThrottledProgress.update = update
    from huozi_local.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_ctrl_c_exits_130_and_leaves_nothing(tiny_models: TinyModels, tmp_path: Path) -> None:
    src = _legacy_copy(tiny_models, tmp_path, "f32")
    before = file_sha256(src)
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHILD, "repair", str(src), "-o", str(tmp_path / "o.gguf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "huozi-local: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert file_sha256(src) == before
    assert os.listdir(src.parent) == [src.name]


@pytest.mark.parametrize(
    "existing",
    [b"my notes, not a model\n", b"GGUF\x03\x00\x00\x00" + b"\x00" * 64],
    ids=["text-file", "truncated-gguf"],
)
def test_repair_output_never_overwrites_a_file_it_did_not_write(
    tiny_models: TinyModels,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    existing: bytes,
) -> None:
    """`repair X -o precious.txt` replaced whatever was there."""
    src = _legacy_copy(tiny_models, tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_bytes(existing)
    assert main(["repair", str(src), "-o", str(precious)]) == 2
    assert "refusing to overwrite" in _one_line_error(capsys)
    assert precious.read_bytes() == existing


def test_repair_output_may_replace_its_own_earlier_output(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    src = _legacy_copy(tiny_models, tmp_path)
    out = tmp_path / "out.gguf"
    assert main(["repair", str(src), "-o", str(out)]) == 0
    first = file_sha256(out)
    assert main(["repair", str(src), "-o", str(out)]) == 0
    assert file_sha256(out) == first
    other_model = tmp_path / "other.gguf"  # a GGUF, but not one this repair wrote
    other_model.write_bytes(tiny_models.get("merged", "q2_k").read_bytes())
    before = other_model.read_bytes()
    assert main(["repair", str(src), "-o", str(other_model)]) == 2
    assert other_model.read_bytes() == before


def _partial_is_the_source_itself(src: Path, folder: Path) -> list[str]:
    """`repair X.partial -o X`: the output's temporary name is the source's own name."""
    renamed = folder / "model.gguf.partial"
    src.rename(renamed)
    return ["repair", str(renamed), "-o", str(folder / "model.gguf")]


def _partial_is_a_symlink_to_the_source(src: Path, folder: Path) -> list[str]:
    (folder / "model.gguf.partial").symlink_to(src)
    return ["repair", str(src), "-o", str(folder / "model.gguf")]


def _partial_is_a_hard_link_to_the_source(src: Path, folder: Path) -> list[str]:
    os.link(src, folder / "model.gguf.partial")
    return ["repair", str(src), "-o", str(folder / "model.gguf")]


def _output_is_the_source(src: Path, folder: Path) -> list[str]:
    return ["repair", str(src), "-o", str(src)]


def _output_is_a_hard_link_to_the_source(src: Path, folder: Path) -> list[str]:
    os.link(src, folder / "model.gguf")
    return ["repair", str(src), "-o", str(folder / "model.gguf")]


def _output_is_a_symlink_to_the_source(src: Path, folder: Path) -> list[str]:
    (folder / "model.gguf").symlink_to(src)
    return ["repair", str(src), "-o", str(folder / "model.gguf")]


@pytest.mark.parametrize(
    "arrange",
    [
        _partial_is_the_source_itself,
        _partial_is_a_symlink_to_the_source,
        _partial_is_a_hard_link_to_the_source,
        _output_is_the_source,
        _output_is_a_hard_link_to_the_source,
        _output_is_a_symlink_to_the_source,
    ],
    ids=lambda arrange: arrange.__name__.strip("_").replace("_", "-"),
)
def test_repair_never_modifies_its_source_whatever_the_names(
    tiny_models: TinyModels,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arrange: Callable[[Path, Path], list[str]],
) -> None:
    """`repair X.partial -o X` truncated X.partial, its own source, to write the result into it
    (so did a stale `out.gguf.partial` that was a symlink or hard link to the source)."""
    src = _legacy_copy(tiny_models, tmp_path)
    before = file_sha256(src)
    inode = src.stat().st_ino
    argv = arrange(src, tmp_path)
    names_before = sorted(p.name for p in tmp_path.iterdir())

    assert main(argv) == 2
    assert "the source is never modified" in _one_line_error(capsys)
    names = [p for p in tmp_path.rglob("*") if not p.is_symlink() and p.stat().st_ino == inode]
    assert names and all(file_sha256(name) == before for name in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == names_before


def test_a_stale_partial_that_links_elsewhere_is_replaced_not_written_through(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    """The temporary file is always a new file: a leftover symlink under its name is removed,
    never followed (the repair wrote through it into whatever it pointed at)."""
    src = _legacy_copy(tiny_models, tmp_path)
    elsewhere = tmp_path / "notes.txt"
    elsewhere.write_text("someone else's file\n")
    (tmp_path / "out.gguf.partial").symlink_to(elsewhere)

    assert main(["repair", str(src), "-o", str(tmp_path / "out.gguf")]) == 0

    assert elsewhere.read_text() == "someone else's file\n"
    assert read_gguf(tmp_path / "out.gguf").layout == "merged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "out.gguf", "src"]
