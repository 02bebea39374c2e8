"""Download a model: resumable, verified, repaired, and honest about what is on disk.

The pipeline for one file: resolve the spec to a repo file (the planner picks the quant when none
is given) -> read the hub's size and sha256 (cached for offline use) -> refuse early when the disk
cannot hold the file plus its repaired copy -> stream into a `.part` file that resumes after any
interruption, hashing as it writes -> verify against the hub and the manifest -> repair a legacy
split-expert file -> rename into the layout of `model_folder`, sidecar first. Nothing is marked
complete until it verified; a bad download is deleted, never left under a loadable name.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huozi_local.core import disk
from huozi_local.core.catalog import ModelSpec, parse_model_spec
from huozi_local.core.config import Paths
from huozi_local.core.errors import Cancelled, GGUFError, HuoziError, NotEnoughDisk
from huozi_local.core.fetch import hub
from huozi_local.core.fetch.disk_space import disk_need
from huozi_local.core.fetch.model_folder import (
    original_copy_path,
    partial_download_path,
    read_sidecar,
    write_sidecar,
)
from huozi_local.core.fetch.targets import DownloadTarget, fetch_listing, resolve_target

if TYPE_CHECKING:
    from huozi_local.core.planning.hardware import Machine
from huozi_local.core.fetch.transfer import TransferResult, fetch_to_part
from huozi_local.core.progress import Progress, ProgressCallback
from huozi_local.core.units import format_bytes

SOURCES = ("hf", "modelscope")


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    sha256: str | None
    bytes_downloaded: int
    resumed_from: int
    repaired: bool
    changes: list[str] = field(default_factory=list)
    already_present: bool = False
    original_path: Path | None = None
    spec: str = ""


def download_model(
    spec: str | ModelSpec,
    paths: Paths,
    *,
    source: str = "hf",
    endpoint: str | None = None,
    token: str | None = None,
    offline: bool = False,
    keep_original: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    machine: Machine | None = None,
) -> DownloadResult:
    """Bring one model onto this disk, ready to load, and say where it is.

    `machine`: what the planner picks a quant for when `spec` names a family without one.

    Runs in a worker thread in the TUI; `progress` gets stage 'download' (done/total bytes, speed
    and time left in the message), then 'verify', then 'repair' for legacy files. Raises
    HuoziError (one line) for anything the user can fix, Cancelled when `cancel` is set: the
    bytes received so far are kept and the next call resumes from them.
    """
    parsed = parse_model_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "path":
        raise HuoziError(f"{parsed.path} is a local file: nothing to download")
    if source not in SOURCES:
        raise HuoziError(f"unknown source '{source}' (use hf or modelscope)")
    is_offline = hub.offline_requested(offline)
    base = hub.resolve_endpoint(endpoint)
    if source == "modelscope":
        from huozi_local.core.fetch import modelscope as modelscope_source

        base = modelscope_source.resolve_endpoint(endpoint)
        if not is_offline:
            modelscope_source.require_modelscope()
    listing = fetch_listing(parsed, paths, source, base, token, is_offline)
    target = resolve_target(parsed, paths, source, listing, machine)
    present = _already_present(target, trust_unverified=is_offline)
    if present is not None:
        return present
    part = partial_download_path(paths, source, target.repo_id, target.filename)
    if is_offline:
        raise HuoziError(_offline_missing_message(target, part))
    _check_disk(target, part)
    url, headers = _file_url(target, base, token)
    _prepare_part(part, target)
    if source == "hf":
        translate_errors = hub.translate_hub_errors(base, target.repo_id, target.filename)
    else:
        from huozi_local.core.fetch import modelscope as modelscope_source

        translate_errors = modelscope_source.translate_errors(
            target.repo_id, target.filename, endpoint=base
        )
    try:
        with translate_errors:
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
    return _finish(target, part, transfer, paths, keep_original, progress, cancel)


def _already_present(target: DownloadTarget, *, trust_unverified: bool) -> DownloadResult | None:
    if not target.final_path.exists():
        return None
    sidecar = read_sidecar(target.final_path)
    verified = sidecar.get("state") in ("verified", "repaired")
    same_file = target.sha256 is None or sidecar.get("sha256") == target.sha256
    if not (verified and same_file) and not trust_unverified:
        return None
    return DownloadResult(
        path=target.final_path,
        sha256=sidecar.get("sha256"),
        bytes_downloaded=0,
        resumed_from=0,
        repaired=sidecar.get("state") == "repaired",
        changes=list(sidecar.get("changes", [])),
        already_present=True,
        spec=target.spec,
    )


def _offline_missing_message(target: DownloadTarget, part: Path) -> str:
    size = f" of {format_bytes(target.size)}" if target.size else ""
    if part.exists():
        have = format_bytes(part.stat().st_size)
        return (
            f"offline: {target.spec} is only partly downloaded ({have}{size} in {part}); "
            f"go online and run `huozi-local download {target.spec}` to finish it"
        )
    return (
        f"offline: {target.spec} ({target.filename}{size}) is not on this disk; go online and "
        f"run `huozi-local download {target.spec}`"
    )


def _check_disk(target: DownloadTarget, part: Path) -> None:
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


def _file_url(target: DownloadTarget, base: str, token: str | None) -> tuple[str, dict[str, str]]:
    if target.source == "modelscope":
        from huozi_local.core.fetch import modelscope as modelscope_source

        url = modelscope_source.file_url(
            target.repo_id, target.filename, target.revision, endpoint=base
        )
        return url, {}
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(target.repo_id, target.filename, revision=target.revision, endpoint=base)
    with hub.translate_hub_errors(base, target.repo_id, target.filename):
        meta = get_hf_file_metadata(url, token=token, endpoint=base, timeout=hub.METADATA_TIMEOUT_S)
    headers: dict[str, str] = build_hf_headers(token=token)
    location = meta.location or url
    if _origin(location) != _origin(base):
        headers.pop("authorization", None)  # signed CDN URL: the token stays with the hub
    return location, headers


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


def _prepare_part(part: Path, target: DownloadTarget) -> None:
    """A `.part` left by a different version of the remote file is not a prefix of this one."""
    import json

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
