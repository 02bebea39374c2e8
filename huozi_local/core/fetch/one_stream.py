"""The fallback for a server that does not serve byte ranges: one stream into a `.part` file,
then the repair as a second pass (with --keep-original, the original is kept beside it).

This is how every download ran before files were fetched over several connections and repaired
in the stream (`in_place`); it still resumes a `.part` left by such a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huozi_local.core import disk
from huozi_local.core.config import Paths
from huozi_local.core.errors import Cancelled, GGUFError, HuoziError, NotEnoughDisk
from huozi_local.core.fetch.disk_space import disk_need
from huozi_local.core.fetch.download_result import DownloadResult
from huozi_local.core.fetch.model_folder import original_copy_path, write_sidecar
from huozi_local.core.fetch.targets import DownloadTarget
from huozi_local.core.fetch.transfer import TransferResult, fetch_to_part
from huozi_local.core.progress import Progress, ProgressCallback
from huozi_local.core.units import format_bytes


def download_one_stream(
    target: DownloadTarget,
    part: Path,
    url: str,
    headers: dict[str, str],
    paths: Paths,
    *,
    keep_original: bool,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    translate_errors: Callable[[], contextlib.AbstractContextManager[None]],
) -> DownloadResult:
    check_disk(target, part)
    _prepare_part(part, target)
    try:
        with translate_errors():
            transfer = fetch_to_part(
                url,
                part,
                expected_size=target.size,
                headers=headers,
                progress=progress,
                cancel=cancel,
                what="download",
            )
    except Cancelled:
        kept = part.stat().st_size if part.exists() else 0
        raise Cancelled(
            f"download cancelled with {format_bytes(kept)} kept: run the same command to resume"
        ) from None
    _verify(target, part, transfer, progress)
    finished = _finish(target, part, transfer, paths, keep_original, progress, cancel)
    return finished


def check_disk(target: DownloadTarget, part: Path) -> None:
    """Refuse before the first byte when the file (and its repaired copy) cannot fit."""
    if target.size is None:
        return
    have = part.stat().st_size if part.exists() else 0
    need = disk_need(
        target.size,
        legacy=target.legacy_expected,
        have=have,
        free=disk.free_disk_bytes(part.parent),
    )
    if not need.fits:
        repair = " plus its repaired copy" if target.legacy_expected else ""
        raise NotEnoughDisk(
            f"not enough disk space for {target.spec}: needs {format_bytes(need.peak_bytes)} "
            f"({format_bytes(target.size)}{repair}), {format_bytes(need.free_bytes)} free in "
            f"{_existing(part.parent)}; free some space or set HUOZI_MODELS_DIR to a bigger disk"
        )


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _prepare_part(part: Path, target: DownloadTarget) -> None:
    """A `.part` left by a different version of the remote file is not a prefix of this one."""

    info = part.with_name(part.name + ".json")
    wanted = {"sha256": target.sha256, "size": target.size, "repo_id": target.repo_id}
    try:
        recorded = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and part.exists() and recorded != wanted:
        part.unlink()
    part.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps(wanted), encoding="utf-8")


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".json").unlink(missing_ok=True)


def _verify(
    target: DownloadTarget, part: Path, transfer: TransferResult, progress: ProgressCallback | None
) -> None:
    if progress is not None:
        progress(Progress("verify", 0, transfer.size, "checking sha256"))
    if target.size is not None and transfer.size != target.size:
        _discard_part(part)
        raise HuoziError(
            f"{target.filename}: downloaded {transfer.size} bytes, the hub lists {target.size}; "
            "the bad download was deleted: run the command again"
        )
    if target.sha256 and transfer.sha256 != target.sha256:
        _discard_part(part)
        raise HuoziError(
            f"{target.filename} is corrupt (sha256 {transfer.sha256[:12]}…, expected "
            f"{target.sha256[:12]}…); the bad download was deleted: run the command again, "
            "and if it fails twice try another mirror (HF_ENDPOINT) or --source"
        )
    if progress is not None:
        progress(Progress("verify", transfer.size, transfer.size, "sha256 matches"))


def _finish(
    target: DownloadTarget,
    part: Path,
    transfer: TransferResult,
    paths: Paths,
    keep_original: bool,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> DownloadResult:
    """Repair when needed, then give the file its loadable name (sidecar first)."""
    final = target.final_path
    final.parent.mkdir(parents=True, exist_ok=True)
    sidecar: dict[str, Any] = {
        "source": target.source,
        "repo_id": target.repo_id,
        "filename": target.filename,
        "revision": target.revision,
        "sha256": transfer.sha256,
        "size": transfer.size,
        "family": target.family,
        "quant": target.quant,
        "downloaded_at": time.time(),
        "state": "verified",
        "changes": [],
    }
    changes = _repair_into(target, part, final, transfer, progress, cancel)
    if changes is None:
        write_sidecar(final, sidecar)
        os.replace(part, final)
        _discard_part(part)
        return DownloadResult(
            final,
            transfer.sha256,
            transfer.bytes_downloaded,
            transfer.resumed_from,
            repaired=False,
            spec=target.spec,
        )
    original: Path | None = None
    if keep_original:
        original = original_copy_path(paths, target.repo_id, target.filename)
        original.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, original)
        sidecar["original_path"] = str(original)
    _discard_part(part)
    sidecar.update(state="repaired", changes=changes, repaired_size=final.stat().st_size)
    write_sidecar(final, sidecar)
    return DownloadResult(
        final,
        transfer.sha256,
        transfer.bytes_downloaded,
        transfer.resumed_from,
        repaired=True,
        changes=changes,
        original_path=original,
        spec=target.spec,
    )


def _repair_into(
    target: DownloadTarget,
    part: Path,
    final: Path,
    transfer: TransferResult,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> list[str] | None:
    """Write the repaired copy of a verified original to `final`; None when it needs no repair.

    A legacy split-expert file always needs it; a merged huozi file may still lack the
    turn-ending metadata. The original stays untouched until the repaired file verified.
    """
    from huozi_local.core.gguf.header import read_gguf
    from huozi_local.core.gguf.repair import needs_repair, repair_gguf

    try:
        gguf = read_gguf(part)
    except GGUFError as exc:
        _discard_part(part)
        raise HuoziError(f"{target.spec} is not a usable GGUF model: {exc}") from exc
    if not needs_repair(gguf):
        return None
    free = disk.free_disk_bytes(part.parent)
    if free < transfer.size:
        raise NotEnoughDisk(
            f"{part.name} downloaded and verified, but repairing it needs "
            f"{format_bytes(transfer.size)} and {format_bytes(free)} is free: free some space "
            "and run the command again"
        )
    staging = part.with_name(part.name.removesuffix(".part") + ".repaired.tmp")
    try:
        result = repair_gguf(
            part, staging, progress=progress, cancel=cancel, source_sha256=transfer.sha256
        )
        if result.output is None:
            return None
        repaired = read_gguf(result.output)
        if repaired.layout == "legacy-split" or repaired.load_blockers():
            raise HuoziError(f"repairing {part.name} did not produce a loadable file")
        # The verified original is deleted next: the repaired copy must be on the disk itself,
        # not only in the page cache, or a power cut could leave neither.
        disk.sync_to_disk(result.output)
        os.replace(result.output, final)
        disk.sync_to_disk(final.parent)
    finally:
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)
    return list(result.changes)
