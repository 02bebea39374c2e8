"""The bytes of an import: readied under a staging name, then put in place in one rename.

The user's file is the one thing an import must never lose. Nothing here deletes it or takes it
away from its name before the model is complete, on the disk (fsynced) and under its final name:
a hard link or a copy is staged while the source stays where it was, and a `--move` on the same
file system is a single rename as the very last step, so a crash, `kill -9` or Ctrl-C at any
moment leaves the user's file where it was or the finished model in place, never neither.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from huozi_local.core import disk
from huozi_local.core.errors import HuoziError, NotEnoughDisk
from huozi_local.core.fetch.model_folder import sidecar_path
from huozi_local.core.progress import ProgressCallback, ThrottledProgress, check_cancel
from huozi_local.core.units import format_bytes

COPY_BLOCK = 8 << 20
STAGING_DIR = ".imports"


def stage(
    source: Path,
    staging: Path,
    move: bool,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> str:
    """Ready `source`'s bytes for `put_in_place`; returns how: "moved", "linked" or "copied".

    "moved" stages nothing: the rename of the source itself is the last step of the import.
    Otherwise a hard link (same file system: instant, no second 27 GB) or a fsynced copy.
    """
    if move and _renamable(source, staging.parent):
        return "moved"
    try:
        os.link(source, staging)
        return "linked"
    except OSError:
        pass  # another file system, or one without hard links: copy
    copy_file(source, staging, progress, cancel)
    _check_copy(source, staging)
    return "copied"


def _check_copy(source: Path, copy: Path) -> None:
    """The copy reads as the model the source was before it may replace anything or let a
    `--move` delete the source (a full second read of 27 GB would double the import)."""
    from huozi_local.core.gguf.header import read_gguf

    read_gguf(copy)  # truncated or not GGUF: one line
    if copy.stat().st_size != source.stat().st_size:
        raise HuoziError(f"copying {source} did not produce the same file; nothing was changed")


def _renamable(source: Path, folder: Path) -> bool:
    """A rename can move it: same file system, and a file (moving a symlink would move the link,
    which may be relative and would then lead nowhere from the models folder)."""
    try:
        return not source.is_symlink() and source.stat().st_dev == folder.stat().st_dev
    except OSError:
        return False


def put_in_place(path: Path, final: Path, *, moving: bool) -> None:
    """The one atomic step that makes the model appear (replacing whatever had the name)."""
    try:
        os.replace(path, final)
    except OSError as exc:
        if not moving:
            raise
        # Same st_dev but still another mount (a bind mount gives EXDEV): nothing was moved.
        raise HuoziError(
            f"cannot move {path} into {final.parent}: {exc.strerror or exc}; import it "
            "without --move"
        ) from exc
    disk.sync_to_disk(final.parent)  # the rename is on the disk before a source is deleted


def remove_stale(staging: Path) -> None:
    """A staged file is never the user's only copy (a link, a copy, a repair output)."""
    for leftover in (staging, staging.with_name(staging.name + ".partial")):
        with contextlib.suppress(OSError):
            leftover.unlink(missing_ok=True)


class SidecarBackup:
    """The sidecar under a name before an import writes its own, put back if the import fails
    before its file is in place: with `--replace` the old model is still there then, and must
    keep describing itself (a download's record says it was verified)."""

    def __init__(self, final: Path) -> None:
        self.path = sidecar_path(final)
        try:
            self.saved: bytes | None = self.path.read_bytes()
        except OSError:
            self.saved = None

    def restore(self) -> None:
        with contextlib.suppress(OSError):
            if self.saved is None:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(self.saved)
            tmp.replace(self.path)


def copy_file(
    source: Path,
    target: Path,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Copy through a `.partial` name with progress and cancel; the target appears complete."""
    size = source.stat().st_size
    free = disk.free_disk_bytes(target.parent)
    if free < size:
        raise NotEnoughDisk(
            f"not enough disk space to copy {source.name}: needs {format_bytes(size)}, "
            f"{format_bytes(free)} free in {target.parent}; free some space, or put the file on "
            "the same disk as the models folder so it can be linked instead of copied"
        )
    partial = target.with_name(target.name + ".partial")
    reporter = ThrottledProgress(progress, "copy", size)
    reporter.update(0, force=True)
    try:
        with open(source, "rb") as reader, open(partial, "wb") as writer:
            while block := reader.read(COPY_BLOCK):
                writer.write(block)
                reporter.advance(len(block))
                check_cancel(cancel, "import")
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    reporter.update(size, force=True)
