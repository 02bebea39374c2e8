"""Download a model: several connections, repaired in the stream, verified, resumable.

The pipeline for one file: resolve the spec to a repo file (the planner picks the quant for the
caller's Machine when none is given) -> read the hub's size and sha256 (cached for offline use)
-> fetch it over several connections straight into its final layout, an official legacy file
repaired as its ranges arrive, its sha256 checked over the original byte order (`in_place`) ->
rename it into the layout of `model_folder`, sidecar first. A server that does not serve ranges
gets one stream into a `.part` file and the repair as a second pass (`one_stream`). Nothing is
marked complete until it verified; a bad download is deleted, never left under a loadable name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huozi_local.core import disk
from huozi_local.core.catalog import ModelSpec, parse_model_spec
from huozi_local.core.config import Paths
from huozi_local.core.errors import Cancelled, GGUFError, HuoziError, NotEnoughDisk
from huozi_local.core.fetch import hub, occupied
from huozi_local.core.fetch.download_result import DownloadResult
from huozi_local.core.fetch.in_place import (
    HEAD_FIRST,
    InPlaceFiles,
    InPlaceResult,
    download_in_place,
)
from huozi_local.core.fetch.model_folder import (
    partial_download_path,
    read_sidecar,
    write_sidecar,
)
from huozi_local.core.fetch.one_stream import download_one_stream
from huozi_local.core.fetch.parallel import RangesIgnored
from huozi_local.core.fetch.targets import DownloadTarget, fetch_listing, resolve_target

if TYPE_CHECKING:
    from huozi_local.core.planning.hardware import Machine
from huozi_local.core.progress import ProgressCallback
from huozi_local.core.units import format_bytes

__all__ = ["DEFAULT_CONNECTIONS", "DownloadResult", "download_model", "partial_bytes"]

SOURCES = ("hf", "modelscope")
DEFAULT_CONNECTIONS = 8
"""Connections per file: what `aria2c -x8` and hfd use; enough to fill a link whose mirror caps
each connection (benchmarks/bench_download.py)."""


def download_model(
    spec: str | ModelSpec,
    paths: Paths,
    *,
    source: str = "hf",
    endpoint: str | None = None,
    token: str | None = None,
    offline: bool = False,
    keep_original: bool = False,
    replace: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    machine: Machine | None = None,
    connections: int = DEFAULT_CONNECTIONS,
) -> DownloadResult:
    """Bring one model onto this disk, ready to load, and say where it is.

    `machine`: what the planner picks a quant for when `spec` names a family without one.
    `connections`: how many HTTP connections fetch ranges of the file at once (`in_place`);
    a server that does not serve ranges gets one stream into a `.part` file instead.
    `replace`: download over another file that has the model's name (an import, a file placed
    by hand, another version); without it that file is refused (ModelExists), never replaced.
    The old file stays until the new one verified: it is replaced by the final rename.

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
    started = time.monotonic()
    is_offline = hub.offline_requested(offline)
    base = hub.resolve_endpoint(endpoint)
    if source == "modelscope":
        from huozi_local.core.fetch import modelscope as modelscope_source

        base = modelscope_source.resolve_endpoint(endpoint)
        if not is_offline:
            modelscope_source.require_modelscope()
    listing = fetch_listing(parsed, paths, source, base, token, is_offline)
    target = resolve_target(parsed, paths, source, listing, machine)
    present = _already_present(target, trust_unverified=is_offline, replace=replace)
    if present is not None:
        return present
    part = partial_download_path(paths, source, target.repo_id, target.filename)
    if is_offline:
        raise HuoziError(_offline_missing_message(target, part))
    url, headers = _file_url(target, base, token)

    def translate_errors() -> contextlib.AbstractContextManager[None]:
        if source == "hf":
            return hub.translate_hub_errors(base, target.repo_id, target.filename)
        from huozi_local.core.fetch import modelscope as modelscope_source

        return modelscope_source.translate_errors(target.repo_id, target.filename, endpoint=base)

    if target.size and target.sha256 and not keep_original and not part.exists():
        try:
            with translate_errors():
                placed = _download_in_place(target, url, headers, connections, progress, cancel)
        except RangesIgnored:
            InPlaceFiles(target.final_path).discard()  # one stream, into `.part`, below
        else:
            return _finish_in_place(target, placed)
    finished = download_one_stream(
        target, part, url, headers, paths,
        keep_original=keep_original, progress=progress, cancel=cancel,
        translate_errors=translate_errors,
    )  # fmt: skip
    return dataclasses.replace(finished, seconds=time.monotonic() - started)


def partial_bytes(final: Path, part: Path) -> int:
    """How much of a file an interrupted download holds: its `.part` (one stream), or the
    ranges its in-place record says are on the disk."""
    if part.exists():
        return part.stat().st_size
    return InPlaceFiles(final).bytes_recorded()


def _download_in_place(
    target: DownloadTarget,
    url: str,
    headers: dict[str, str],
    connections: int,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> InPlaceResult:
    """Several connections, written straight to the final layout (repaired in the stream)."""
    assert target.size is not None and target.sha256 is not None
    final = target.final_path
    final.parent.mkdir(parents=True, exist_ok=True)

    def check_room(needed: int) -> None:
        free = disk.free_disk_bytes(final.parent)
        if needed > free:
            raise NotEnoughDisk(
                f"not enough disk space for {target.spec}: needs {format_bytes(needed)} more, "
                f"{format_bytes(free)} free in {final.parent}; free some space or set "
                "HUOZI_MODELS_DIR to a bigger disk"
            )

    check_room(target.size + HEAD_FIRST - InPlaceFiles(final).held_bytes())  # before any byte
    try:
        return download_in_place(
            final,
            url,
            headers,
            size=target.size,
            sha256=target.sha256,
            identity={"repo_id": target.repo_id, "filename": target.filename},
            repair=True,
            connections=connections,
            progress=progress,
            cancel=cancel,
            check_room=check_room,
        )
    except Cancelled:
        kept = InPlaceFiles(final).held_bytes()
        raise Cancelled(
            f"download cancelled with {format_bytes(kept)} kept: run the same command to resume"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NotEnoughDisk(
                f"the disk filled up while downloading {target.filename}; free some space and "
                "run the command again to resume"
            ) from exc
        raise


def _finish_in_place(target: DownloadTarget, placed: InPlaceResult) -> DownloadResult:
    """Give the verified file its loadable name, sidecar first; then the helpers go."""
    from huozi_local.core.gguf.header import read_gguf

    files = InPlaceFiles(target.final_path)
    if not placed.repaired:
        try:
            read_gguf(placed.partial)
        except GGUFError as exc:
            files.discard()
            raise HuoziError(f"{target.spec} is not a usable GGUF model: {exc}") from exc
    final = target.final_path
    sidecar: dict[str, Any] = {
        "source": target.source,
        "repo_id": target.repo_id,
        "filename": target.filename,
        "revision": target.revision,
        "sha256": placed.sha256,
        "size": target.size,
        "family": target.family,
        "quant": target.quant,
        "downloaded_at": time.time(),
        "state": "repaired" if placed.repaired else "verified",
        "changes": placed.changes,
    }
    if placed.repaired:
        sidecar["repaired_size"] = placed.size
    write_sidecar(final, sidecar)
    os.replace(placed.partial, final)
    disk.sync_to_disk(final.parent)
    files.discard()
    return DownloadResult(
        final,
        placed.sha256,
        placed.bytes_downloaded,
        placed.resumed_from,
        repaired=placed.repaired,
        changes=placed.changes,
        spec=target.spec,
        connections=placed.connections,
        seconds=placed.seconds,
    )


def _already_present(
    target: DownloadTarget, *, trust_unverified: bool, replace: bool
) -> DownloadResult | None:
    """The file under the model's name when it is the one asked for; None to download it.

    Another file there (a user's import, a file placed by hand, another version) is refused
    unless `replace`: it may be the only copy of a model the user has.
    """
    if not occupied.occupied(target.final_path):
        return None
    sidecar = read_sidecar(target.final_path)
    verified = sidecar.get("state") in ("verified", "repaired")
    # A sha256 this program computed over the bytes: a download's, or an import's repair's
    # (an import that only linked a file records what the file itself claims, not trusted).
    hashed_here = verified or sidecar.get("method") == "repaired"
    if target.sha256 is None:
        same_file = verified
    else:
        same_file = hashed_here and sidecar.get("sha256") == target.sha256
    if not same_file and not trust_unverified:
        if replace:
            return None
        raise occupied.refusal(target.final_path, target.spec, "download")
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
    in_place = InPlaceFiles(target.final_path)
    if part.exists() or in_place.exists():
        where = part if part.exists() else in_place.main
        have = format_bytes(partial_bytes(target.final_path, part))
        return (
            f"offline: {target.spec} is only partly downloaded ({have}{size} in {where}); "
            f"go online and run `huozi-local download {target.spec}` to finish it"
        )
    return (
        f"offline: {target.spec} ({target.filename}{size}) is not on this disk; go online and "
        f"run `huozi-local download {target.spec}`"
    )


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
