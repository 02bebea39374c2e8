"""A real Ctrl-C (SIGINT) to the real `huozi-local` in a child process, mid-work.

The promises: Ctrl-C during `download` keeps what arrived and the next run resumes; during
`import` leaves nothing half-written and the user's file as it was; during a reply in `chat`
stops that reply, not the chat. Each is checked by sending the signal the terminal sends, at a
point the test observes (never after a guessed delay), to the command as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_server import FakeHub, running_hub

from huozi_local.core.config import Paths
from huozi_local.core.fetch.in_place import InPlaceFiles
from huozi_local.core.fetch.model_folder import family_model_path
from huozi_local.testing.legacy_gguf import write_legacy_gguf
from huozi_local.testing.tiny_model import RIG_TEXT, TinyModels

pytestmark = pytest.mark.slow
MiB = 1 << 20
DEADLINE_S = 120


def start(*args: str, home: Path, stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "huozi_local", *args],
        env={**os.environ, "HUOZI_HOME": str(home)},
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until(condition: Callable[[], bool], what: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert child.poll() is None, f"the command ended before {what}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


@pytest.fixture
def hub(tiny_models: TinyModels) -> Iterator[FakeHub]:
    with running_hub() as fake:
        fake.add_file("HIT-SCIR/huozi3-gguf", "huozi3-q2_k.gguf", tiny_models.get("split", "q4_0"))
        yield fake


def test_ctrl_c_in_download_keeps_what_arrived_and_the_next_run_resumes(
    hub: FakeHub, huozi_home: Path
) -> None:
    final = family_model_path(_paths(huozi_home), "huozi3", "q2_k")
    hub.bytes_per_s = 1e6  # slow enough to be stopped half way
    child = start("download", "huozi3:q2_k", "--endpoint", hub.hub_url, home=huozi_home)
    wait_until(lambda: InPlaceFiles(final).bytes_recorded() > 6 * MiB, "bytes on the disk", child)
    child.send_signal(signal.SIGINT)
    _out, err = child.communicate(timeout=DEADLINE_S)
    assert child.returncode == 130
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "download cancelled with" in lines[0]
    assert "run the same command to resume" in lines[0]
    kept = InPlaceFiles(final).bytes_recorded()
    assert kept > 6 * MiB and not final.exists()
    hub.bytes_per_s = None
    again = start("download", "huozi3:q2_k", "--endpoint", hub.hub_url, "--json", home=huozi_home)
    out, err = again.communicate(timeout=DEADLINE_S)
    assert again.returncode == 0, err
    report = json.loads(out)
    assert report["resumed_from"] >= kept and report["repaired"]


def _paths(home: Path) -> Paths:
    return Paths.from_env({"HUOZI_HOME": str(home)})


def test_ctrl_c_in_import_leaves_nothing_half_written_and_the_file_as_it_was(
    huozi_home: Path, tmp_path: Path
) -> None:
    """A legacy file of a few GB (sparse: no disk used) takes seconds to repair into place."""
    source = tmp_path / "huozi3-big.gguf"
    write_legacy_gguf(source, n_layers=8, n_embd=2048, n_ff=8192, sparse=True)
    before = source.stat()
    staging = _paths(huozi_home).models_dir / ".imports"
    child = start("import", str(source), home=huozi_home)
    wait_until(lambda: any(staging.glob("*.partial")), "the repair writing", child)
    child.send_signal(signal.SIGINT)
    _out, err = child.communicate(timeout=DEADLINE_S)
    assert child.returncode == 130, err
    assert len(err.decode().strip().splitlines()) == 1
    left = [p for p in _paths(huozi_home).models_dir.rglob("*") if p.is_file()]
    assert left == []  # nothing half-written, nothing that looks imported
    after = source.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


def test_ctrl_c_in_chat_stops_the_reply_and_the_chat_goes_on(
    tiny_models: TinyModels, huozi_home: Path
) -> None:
    """Each reply would run to 3000 tokens; each is stopped by a Ctrl-C once it streams, and the
    chat takes the next line after each. Only observed output is waited for: on a loaded machine
    a reply of the tiny model can take minutes to reach its limit."""
    model = tiny_models.get("merged", "q4_0", rig="loop")  # a reply that only a limit ends
    child = start(
        "chat", "--model", str(model), "--ctx", "8192", "--max-tokens", "3000", "--temp", "0",
        home=huozi_home, stdin=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    received = bytearray()

    def read() -> None:
        assert child.stdout is not None
        while chunk := os.read(child.stdout.fileno(), 4096):
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for turn, question in enumerate(("讲一个很长的故事", "再讲一个")):
        child.stdin.write(f"{question}\n".encode())
        child.stdin.flush()
        lines_before = bytes(received).count(b"\n")

        def streaming(line: int = lines_before) -> bool:
            return bytes(received).split(b"\n")[line].count(RIG_TEXT.encode()) >= 2

        def ended(line: int = lines_before) -> bool:
            return bytes(received).count(b"\n") > line

        wait_until(streaming, f"reply {turn + 1} streaming", child)
        child.send_signal(signal.SIGINT)
        wait_until(ended, f"reply {turn + 1} to end", child)
    child.stdin.close()
    child.wait(DEADLINE_S)
    reader.join(DEADLINE_S)
    assert child.stderr is not None
    err = child.stderr.read()
    assert child.returncode == 0, err  # neither Ctrl-C ended the chat
    assert b"Traceback" not in err
    replies = received.decode().splitlines()[:2]
    assert len(replies) == 2
    assert all(2 <= reply.count(RIG_TEXT) < 3000 // 9 for reply in replies)  # stopped, not ended
