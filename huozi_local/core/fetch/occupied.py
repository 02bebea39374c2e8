"""What already lies under the name a model is about to take, and whether it is that model.

`import` and `download` put a model under a fixed name (`huozi3/huozi3-q4_0.gguf`). Whatever
is there is a model the user has, and maybe the only copy of it: a verified download, a file
imported with `--move`. Neither command replaces it unless told to (`--replace`); the same model
again is nothing to do. "The same" is decided by bytes, never by name or size alone: the two
files are equal, or the file there was repaired from exactly these bytes (the source sha256 a
repair records in the header it writes).
"""

from __future__ import annotations

import hashlib
import stat
import threading
from pathlib import Path

from huozi_local.core.errors import HuoziError, ModelExists
from huozi_local.core.fetch.model_folder import read_sidecar
from huozi_local.core.gguf.header import read_gguf
from huozi_local.core.gguf.repair import needs_repair
from huozi_local.core.progress import ProgressCallback, ThrottledProgress, check_cancel

BLOCK = 8 << 20


def occupied(path: Path) -> bool:
    """Something (a file, a folder, even a dangling symlink) holds this name."""
    return path.exists() or path.is_symlink()


def holds(
    final: Path,
    source: Path,
    *,
    repairs: bool,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> bool:
    """Is the model at `final` what importing `source` would put there?

    `repairs`: `source` would be repaired on the way in, so `final` is that model when it is a
    complete repair of these very bytes. Reads as little as it can: a comparison stops at the
    first differing block (different builds differ in their header, the first megabytes), and
    the source is hashed only when `final` records the sha256 of the file it was repaired from.
    """
    try:
        there = final.stat()
        size = source.stat().st_size
    except OSError:
        return False
    if not stat.S_ISREG(there.st_mode):
        return False
    if there.st_size == size and same_bytes(source, final, progress, cancel):
        return True
    if not repairs:
        return False
    try:
        repaired = read_gguf(final)
    except HuoziError:
        return False
    recorded = repaired.source_sha256
    if recorded is None or needs_repair(repaired):
        return False  # not a repair, or one an older version left incomplete: not the same file
    return sha256_of(source, progress, cancel) == recorded.lower()


def same_bytes(
    a: Path, b: Path, progress: ProgressCallback | None, cancel: threading.Event | None
) -> bool:
    """Byte-for-byte equality, with progress and cancel (filecmp has neither, over 27 GB)."""
    size = a.stat().st_size
    reporter = ThrottledProgress(progress, "verify", size)
    with open(a, "rb") as left, open(b, "rb") as right:
        while block := left.read(BLOCK):
            if right.read(len(block)) != block:
                return False
            reporter.advance(len(block), "comparing with the model already there")
            check_cancel(cancel, "import")
        return right.read(1) == b""


def sha256_of(path: Path, progress: ProgressCallback | None, cancel: threading.Event | None) -> str:
    digest = hashlib.sha256()
    reporter = ThrottledProgress(progress, "verify", path.stat().st_size)
    with open(path, "rb") as reader:
        while block := reader.read(BLOCK):
            digest.update(block)
            reporter.advance(len(block), "comparing with the model already there")
            check_cancel(cancel, "import")
    return digest.hexdigest()


def refusal(final: Path, what: str, command: str, *, own_name: bool = False) -> ModelExists:
    """The one line that says a different model is in the way, which file, and whose it is."""
    return ModelExists(
        f"{what} is already in the models folder as a different file, {final} "
        f"({describe(final)}), left as it is",
        str(final),
        command,
        own_name,
    )


def describe(final: Path) -> str:
    """Where the file there came from, as its sidecar tells it, for the refusal."""
    record = read_sidecar(final)
    if record.get("source") == "import":
        return f"imported from {record.get('imported_from') or 'a file'}"
    if record.get("state") in ("verified", "repaired"):
        sha = str(record.get("sha256") or "")
        return f"a verified download, sha256 {sha[:12]}…" if sha else "a verified download"
    return "placed there by hand, not verified"
