"""A model the user has is never replaced by surprise, and `--move` never loses the user's file.

`import` and `download` put a model under a fixed name (`huozi3/huozi3-q4_0.gguf`): whatever is
there may be the only copy the user has. Real tiny models of different bytes, the real repair,
real renames and hard links, a fake hub on 127.0.0.1 through the real client, and real child
processes killed or interrupted mid-import.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from disks import mounted_tmpfs
from hub_server import running_hub

from huozi_local.cli import main
from huozi_local.core.config import Paths, Settings
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    imported_model_path,
    read_sidecar,
)
from huozi_local.testing.tiny_model import TinyModels, write_plain_gguf

HUOZI_REPO = "HIT-SCIR/huozi3-gguf"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(path: Path) -> tuple[str, int, int, int]:
    """Content, size, inode and modification time: "left as it is" means all four."""
    stat = path.stat()
    return sha256_of(path), stat.st_size, stat.st_ino, stat.st_mtime_ns


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.startswith("huozi-local: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def place(model: Path, where: Path) -> Path:
    """A copy of a tiny model under the name a user's file would have."""
    where.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, where)
    return where


def temporaries(paths: Paths) -> list[str]:
    """Anything under the models folder that is not a finished model or its sidecar."""
    return sorted(
        str(p.relative_to(paths.models_dir))
        for p in paths.models_dir.rglob("*")
        if p.is_file() and not p.name.endswith((".gguf", ".gguf.json"))
    )


@pytest.fixture
def paths(huozi_home: Path) -> Paths:
    return Paths.from_env()


def test_importing_another_file_over_a_model_is_refused_and_keeps_it(
    paths: Paths, tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    """Import A with --move, import B (different bytes, same huozi3:q4_0): A was gone for good."""
    a = place(tiny_models.get("merged", "q4_0"), tmp_path / "a" / "huozi3-q4_0.gguf")
    a_again = place(a, tmp_path / "a-copy" / "huozi3-q4_0.gguf")
    b = place(tiny_models.get("merged", "q4_0", rig="chat"), tmp_path / "b" / "huozi3-q4_0.gguf")
    assert sha256_of(a) != sha256_of(b)
    code, _, err = run_cli(capsys, "import", str(a), "--move")
    assert code == 0, err
    final = family_model_path(paths, "huozi3", "q4_0")
    assert not a.exists() and read_sidecar(final)["sha256"] == sha256_of(a_again)
    kept = fingerprint(final)

    code, out, err = run_cli(capsys, "import", str(b))

    assert code == 2 and out == ""
    line = one_line(err)
    assert "huozi3:q4_0 is already in the models folder as a different file" in line
    assert str(final) in line and f"imported from {a}" in line
    assert "--replace" in line and "--keep-both" in line
    assert fingerprint(final) == kept and read_sidecar(final)["sha256"] == sha256_of(a_again)
    assert temporaries(paths) == []

    # The same bytes again, from another place: nothing to do, nothing touched.
    code, out, err = run_cli(capsys, "import", str(a_again))
    assert code == 0, err
    assert "the same model is already in the models folder" in out
    assert fingerprint(final) == kept and a_again.exists()

    # Keep both: B goes under its own file name; A stays the family model.
    code, out, err = run_cli(capsys, "import", str(b), "--keep-both")
    assert code == 0, err
    beside = imported_model_path(paths, b.name)
    assert read_sidecar(beside)["sha256"] == sha256_of(b)
    assert fingerprint(final) == kept
    assert Settings.load(paths.config_file).model == str(beside)

    # Replace: asked for, B takes the name.
    code, out, err = run_cli(capsys, "import", str(b), "--replace")
    assert code == 0, err
    assert "replaced the file that had this name" in out
    assert read_sidecar(final)["sha256"] == sha256_of(b) and b.exists()
    assert temporaries(paths) == []


def test_a_file_under_its_own_name_is_not_replaced_by_another_of_that_name(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two different `model.gguf` from two folders: the second replaced the first."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = write_plain_gguf(tmp_path / "one" / "model.gguf", seed=1)
    second = write_plain_gguf(tmp_path / "two" / "model.gguf", seed=2)
    assert run_cli(capsys, "import", str(first), "--move")[0] == 0
    final = imported_model_path(paths, "model.gguf")
    kept = fingerprint(final)

    code, _, err = run_cli(capsys, "import", str(second))

    assert code == 2
    line = one_line(err)
    assert str(final) in line and "--replace" in line and "rename your file" in line
    assert "--keep-both" not in line  # it would go under that very name again
    assert fingerprint(final) == kept
    code, _, err = run_cli(capsys, "import", str(second), "--keep-both")
    assert code == 2 and str(final) in one_line(err)
    assert fingerprint(final) == kept
    assert run_cli(capsys, "import", str(second), "--replace")[0] == 0
    assert sha256_of(final) == sha256_of(second) and second.exists()


@pytest.mark.slow
def test_download_never_overwrites_an_imported_model(
    paths: Paths, tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    """`download huozi3:q2_k` fetched the hub's file over the user's own q2_k import."""
    mine = place(tiny_models.get("merged", "q2_k", rig="chat"), tmp_path / "mine.gguf")
    published = tiny_models.get("split", "q2_k")
    assert run_cli(capsys, "import", str(mine), "--move")[0] == 0
    final = family_model_path(paths, "huozi3", "q2_k")
    kept = fingerprint(final)
    with running_hub() as fake:
        fake.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", published)
        argv = ("download", "huozi3:q2_k", "--endpoint", fake.hub_url)

        code, out, err = run_cli(capsys, *argv)

        assert code == 2 and out == ""
        line = one_line(err)
        assert "huozi3:q2_k is already in the models folder as a different file" in line
        assert str(final) in line and "imported from" in line and "--replace" in line
        assert fingerprint(final) == kept and temporaries(paths) == []
        assert fake.body_bytes_sent() == 0

        code, out, err = run_cli(capsys, *argv, "--replace")
        assert code == 0, err
    sidecar = read_sidecar(final)
    assert sidecar["state"] == "repaired" and sidecar["sha256"] == sha256_of(published)


@pytest.mark.slow
def test_download_finds_an_import_of_the_very_file_it_would_fetch(
    paths: Paths, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    """Imported before the hub's sha256 was known (state "imported"), the same bytes were
    downloaded again over it; the import's repair hashed them, and the hashes agree."""
    published = tiny_models.get("split", "q2_k")
    assert run_cli(capsys, "import", str(published))[0] == 0
    final = family_model_path(paths, "huozi3", "q2_k")
    assert read_sidecar(final)["state"] == "imported"
    kept = fingerprint(final)
    with running_hub() as fake:
        fake.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", published)
        code, out, err = run_cli(capsys, "download", "huozi3:q2_k", "--endpoint", fake.hub_url)
        assert code == 0, err
        assert fake.body_bytes_sent() == 0
    assert "huozi3:q2_k is already downloaded" in out
    assert fingerprint(final) == kept


def test_a_download_is_not_replaced_by_an_import(
    paths: Paths, tmp_path: Path, tiny_models: TinyModels, capsys: pytest.CaptureFixture[str]
) -> None:
    published = tiny_models.get("split", "q2_k")
    with running_hub() as fake:
        fake.add_file(HUOZI_REPO, "huozi3-q2_k.gguf", published)
        assert run_cli(capsys, "download", "huozi3:q2_k", "--endpoint", fake.hub_url)[0] == 0
    final = family_model_path(paths, "huozi3", "q2_k")
    kept = fingerprint(final)
    other = place(tiny_models.get("merged", "q2_k"), tmp_path / "other-q2_k.gguf")

    code, _, err = run_cli(capsys, "import", str(other), "--move")

    assert code == 2
    assert "a verified download" in one_line(err) and str(final) in err
    assert fingerprint(final) == kept and other.exists()
    # The published file itself, imported: the download already holds exactly it.
    code, out, err = run_cli(capsys, "import", str(published))
    assert code == 0, err
    assert "the same model is already in the models folder" in out
    assert fingerprint(final) == kept and read_sidecar(final)["source"] == "hf"


KILLED_MID_MOVE = textwrap.dedent(
    """
    import sys, time
    from huozi_local.core.fetch import adopt

    def stall(model_path, data):
        print("halfway", flush=True)  # the model is ready, about to be put in place
        time.sleep(600)

    adopt.write_sidecar = stall
    from huozi_local.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_mid_move_leaves_the_users_file_where_it_was(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`import --move` renamed the file into models/.imports/ first: a kill there left it out of
    the user's sight, and the next import of that name deleted it as a stale leftover."""
    (tmp_path / "mine").mkdir()
    src = write_plain_gguf(tmp_path / "mine" / "model.gguf", seed=3)
    before = fingerprint(src)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_MOVE, "import", str(src), "--move"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "halfway"
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert fingerprint(src) == before
    assert not imported_model_path(paths, "model.gguf").exists()
    # The next import of that name (this file again) finishes the move.
    code, _, err = run_cli(capsys, "import", str(src), "--move")
    assert code == 0, err
    assert not src.exists() and sha256_of(imported_model_path(paths, "model.gguf")) == before[0]
    assert temporaries(paths) == []


CTRL_C_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from huozi_local.core.fetch import adopt

    where = sys.argv.pop(1)
    write_sidecar = adopt.write_sidecar

    def sidecar_then_ctrl_c(model_path, data):
        write_sidecar(model_path, data)
        os.kill(os.getpid(), signal.SIGINT)  # after the last check: the import goes on

    from huozi_local.core import progress

    update = progress.ThrottledProgress.update

    def ctrl_c_mid_work(self, done, message="", *, force=False):
        update(self, done, message, force=force)
        if done > 0:
            os.kill(os.getpid(), signal.SIGINT)

    if where == "at-the-end":
        adopt.write_sidecar = sidecar_then_ctrl_c
    else:
        progress.ThrottledProgress.update = ctrl_c_mid_work
    from huozi_local.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_ctrl_c_mid_repair_of_a_move_leaves_the_users_file(
    paths: Paths, tmp_path: Path, tiny_models: TinyModels
) -> None:
    src = place(tiny_models.get("split", "f32"), tmp_path / "mine" / "huozi3.gguf")
    before = fingerprint(src)
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHILD, "mid-work", "import", str(src), "--move"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 130, done.stderr
    assert "your file is unchanged" in done.stderr
    assert fingerprint(src) == before
    assert list(paths.models_dir.rglob("*.gguf")) == [] and temporaries(paths) == []


def test_ctrl_c_after_the_move_was_done_says_so(paths: Paths, tmp_path: Path) -> None:
    """A Ctrl-C that came after the last point where the import could stop: it finished, and
    the file was moved, but the command said "cancelled: your file is unchanged"."""
    (tmp_path / "mine").mkdir()
    src = write_plain_gguf(tmp_path / "mine" / "model.gguf", seed=4)
    content = sha256_of(src)
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHILD, "at-the-end", "import", str(src), "--move"],
        capture_output=True,
        text=True,
        check=False,
    )
    final = imported_model_path(paths, "model.gguf")
    assert not src.exists() and sha256_of(final) == content
    assert done.returncode == 0, done.stderr
    assert "moved" in done.stdout and "unchanged" not in done.stderr


@pytest.fixture
def other_disk(tmp_path: Path) -> Iterator[Path]:
    """A real second file system (a USB stick)."""
    with mounted_tmpfs(tmp_path / "usb", "64m") as mount_point:
        yield mount_point


@pytest.mark.may_skip
def test_a_move_from_another_disk_deletes_the_file_only_after_its_copy_is_in_place(
    paths: Paths, other_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_plain_gguf(other_disk / "model.gguf", 24 << 20, seed=5)
    before = fingerprint(src)
    interrupted = subprocess.run(
        [sys.executable, "-c", CTRL_C_CHILD, "mid-work", "import", str(src), "--move"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert interrupted.returncode == 130, interrupted.stderr
    assert fingerprint(src) == before
    assert list(paths.models_dir.rglob("*.gguf")) == [] and temporaries(paths) == []

    code, out, err = run_cli(capsys, "import", str(src), "--move")

    assert code == 0, err
    final = imported_model_path(paths, "model.gguf")
    assert read_sidecar(final)["method"] == "copied" and sha256_of(final) == before[0]
    assert not src.exists() and "moved" in out
