"""Turn an official February-2024 huozi3 GGUF into one today's llama.cpp loads and chats with.

Two things are wrong with those files. Each expert is its own tensor (`blk.N.ffn_gate.E.weight`),
which llama.cpp stopped loading in 2024; it wants `blk.N.ffn_gate_exps.weight` with the experts
stacked on the outermost axis. Because ggml stores a 3-D tensor as its 2-D slices one after the
other, the merge is a byte-exact concatenation of the experts' quantized data: nothing is
dequantized, so the repaired model computes exactly what the original did. And the metadata does
not say that 57001 ends a turn, nor what the chat template is, nor that the utterance tokens are
control tokens (so a user typing `<|endofutterance|>` could end the model's turn).

The source file is never written to. The result is built under a `.partial` name in the target
folder, verified, and only then renamed, so an interrupted run never leaves a file that looks
finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from huozi_local.core import disk
from huozi_local.core.errors import GGUFError, HuoziError, NotEnoughDisk
from huozi_local.core.gguf.header import KNOWN_ARCHITECTURES, GGUFFile, read_gguf
from huozi_local.core.gguf.repair_layout import (
    SOURCE_SHA256_KEY,
    VERSION_KEY,
    _expert_groups,
    _metadata_fixes,
    repair_layout,
    verify_repaired,
)
from huozi_local.core.gguf.rewrite import (
    DISK_FULL_ERRNOS,
    Header,
    OutTensor,
    SourceHasher,
    copy_segments,
    disk_full_error,
    open_partial,
    open_source,
    plan_segments,
    pwrite_all,
)
from huozi_local.core.progress import ProgressCallback, ThrottledProgress, check_cancel
from huozi_local.core.units import format_bytes

PARTIAL_SUFFIX = ".partial"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RepairResult:
    output: Path | None  # None when there was nothing to do
    nothing_to_do: bool
    changes: list[str] = field(default_factory=list)
    bytes_written: int = 0
    source_sha256: str = ""  # "" when nothing was done and the caller did not pass one


def default_output(src: Path) -> Path:
    return src.with_name(f"{src.stem}.repaired.gguf")


def needs_repair(gguf: GGUFFile) -> bool:
    """Does today's llama.cpp need this file repaired? A legacy split-expert file always does;
    a merged huozi file when it still lacks the turn-ending metadata."""
    return gguf.layout == "legacy-split" or (gguf.is_huozi and bool(repair_plan(gguf)))


def repair_plan(gguf: GGUFFile) -> list[str]:
    """What `repair_gguf` would change, one human line each; empty means nothing to do."""
    groups = _expert_groups(gguf)
    lines: list[str] = []
    if groups:
        n_split = sum(len(t) for t in groups.values())
        lines.append(
            f"merged {n_split} expert tensors into {len(groups)} 3-D ffn_*_exps tensors "
            "(bytes restacked, nothing dequantized)"
        )
    lines += _metadata_fixes(gguf)[1]
    return lines


# -- the repair ------------------------------------------------------------------------------------
def repair_gguf(
    src: Path,
    dst: Path | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    source_sha256: str | None = None,
) -> RepairResult:
    """Write a repaired copy of `src` (default: `<stem>.repaired.gguf` beside it).

    Pass `source_sha256` when it is already known (a verified download) to skip hashing the
    source; otherwise it is computed while the data streams, at no extra read.
    """
    src = Path(src)
    gguf = read_gguf(src)
    if gguf.architecture not in KNOWN_ARCHITECTURES:
        raise GGUFError(
            f"{src}: architecture '{gguf.architecture}' is not one huozi-local knows; "
            "it cannot repair this file"
        )
    plan = repair_plan(gguf)
    if source_sha256 is not None and not _SHA_RE.match(source_sha256.lower()):
        raise HuoziError(f"'{source_sha256}' is not a sha256 (64 hex digits)")
    if not plan:
        return RepairResult(None, True, [], 0, (source_sha256 or "").lower())
    dst = _resolve_output(src, dst)
    layout = repair_layout(gguf, source_sha256.lower() if source_sha256 else None)
    header, tensors = layout.header, layout.tensors
    partial = dst.with_name(dst.name + PARTIAL_SUFFIX)
    _clear_partial(src, partial)
    _check_disk(dst.parent, header.total_size)
    dst_fd = _create_partial(partial)
    try:
        sha = _write(gguf, header, tensors, dst_fd, source_sha256, progress, cancel)
        verify_repaired(gguf, partial, layout, sha)
        os.replace(partial, dst)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(dst.parent, header.total_size) from exc
        if isinstance(exc, OSError) and not isinstance(exc, HuoziError):
            raise HuoziError(f"cannot write {partial}: {exc.strerror or exc}") from exc
        raise
    changes = [*plan, f"recorded the source sha256 {sha} as {SOURCE_SHA256_KEY}"]
    return RepairResult(dst, False, changes, header.total_size, sha)


def _resolve_output(src: Path, dst: Path | None) -> Path:
    dst = default_output(src) if dst is None else Path(dst)
    if dst.is_dir():
        dst = dst / default_output(src).name
    if dst.resolve() == src.resolve() or (dst.exists() and dst.samefile(src)):
        raise HuoziError(f"refusing to overwrite {src}: the source is never modified, pick -o OUT")
    if not dst.parent.is_dir():
        raise HuoziError(f"cannot write {dst}: the folder {dst.parent} does not exist")
    if (dst.exists() or dst.is_symlink()) and not _written_by_repair(dst):
        raise HuoziError(
            f"refusing to overwrite {dst}: it is not a GGUF file huozi-local repaired "
            "(move it away or pick another -o OUT)"
        )
    return dst


def _written_by_repair(path: Path) -> bool:
    """Whether `path` is an earlier output of this repair (safe to replace with a new one).

    `repair X -o precious.txt` replaced whatever was there. Only a regular GGUF file that
    carries the provenance keys this repair records may be overwritten.
    """
    if path.is_symlink() or not path.is_file():
        return False
    try:
        existing = read_gguf(path)
    except HuoziError:
        return False
    return existing.values.has(SOURCE_SHA256_KEY) and existing.values.has(VERSION_KEY)


def _clear_partial(src: Path, partial: Path) -> None:
    """Make way for a new temporary file, refusing when its name leads to the source.

    `repair X.partial -o X` opened its own source as the output and truncated it; so did a stale
    `OUT.partial` that was a symlink or a hard link to the source. Names cannot tell (a path can
    be spelled many ways, a hard link has no "original"), so the file's identity decides. Any
    other leftover under that name is only a name: unlinking it never touches the data a link
    led to, where opening it for writing did.
    """
    if not (partial.exists() or partial.is_symlink()):
        return
    with contextlib.suppress(OSError):  # a dangling symlink leads nowhere, least of all to src
        if partial.samefile(src):
            raise HuoziError(
                f"refusing to write {partial}: it is the file being repaired ({src}), and the "
                "source is never modified; pick another -o OUT"
            )
    if partial.is_dir() and not partial.is_symlink():
        raise HuoziError(f"cannot write {partial}: it is a folder; move it away")
    try:
        partial.unlink()
    except OSError as exc:
        raise HuoziError(f"cannot replace {partial}: {exc.strerror or exc}") from exc


def _create_partial(partial: Path) -> int:
    """A brand-new file (O_EXCL, no symlink followed): whatever appears under the name after
    `_clear_partial` is refused, never written through, and never deleted by our cleanup."""
    try:
        return open_partial(partial)
    except OSError as exc:
        raise HuoziError(f"cannot write {partial}: {exc.strerror or exc}") from exc


def _check_disk(folder: Path, needed: int) -> None:
    free = disk.free_disk_bytes(folder)
    if free < needed:
        raise NotEnoughDisk(
            f"not enough disk space in {folder}: the repaired file needs "
            f"{format_bytes(needed)}, {format_bytes(free)} free"
        )


def _write(
    gguf: GGUFFile,
    header: Header,
    tensors: list[OutTensor],
    dst_fd: int,
    source_sha256: str | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> str:
    """Header, then the data; the source is hashed beside the copy unless its sha256 is known.

    Progress counts the bytes copied plus, when hashing, the bytes hashed. Closes `dst_fd`.
    """
    segments = plan_segments(header, tensors)  # the layout's, in source order
    to_copy = sum(s.n_bytes for s in segments)
    try:
        src_fd = open_source(gguf.path)
    except BaseException:
        os.close(dst_fd)
        raise
    hasher = None if source_sha256 else SourceHasher(gguf.path, gguf.file_size)
    total = to_copy + (gguf.file_size if hasher else 0)
    reporter = ThrottledProgress(progress, "repair", total)
    copied = 0

    def report() -> None:
        reporter.update(copied + (hasher.hashed if hasher else 0))
        check_cancel(cancel, "repair")

    def tick(moved: int) -> None:
        nonlocal copied
        copied += moved
        report()

    try:
        reporter.update(0, force=True)
        try:
            if hasher is not None:
                hasher.start()
            pwrite_all(dst_fd, header.data, 0)
            copy_segments(src_fd, dst_fd, segments, tick)
            if hasher is None:
                sha = str(source_sha256).lower()
            else:
                while hasher.is_alive():
                    hasher.join(0.1)
                    report()
                sha = hasher.result()
                pwrite_all(dst_fd, sha.encode("ascii"), header.marker_positions["sha"])
            os.ftruncate(dst_fd, header.total_size)
        finally:
            os.close(dst_fd)
    finally:
        if hasher is not None and hasher.is_alive():
            hasher.stop.set()
            hasher.join()
        os.close(src_fd)
    reporter.update(total, force=True)
    return sha
