"""Adopt a GGUF file the user already has (a browser download, ModelScope, a USB stick) into the
models folder, so every command and the app find it without `--model`.

Many people cannot reach the hub but already hold `huozi3-q4_0.gguf`. Importing it reads the
header (a non-GGUF, truncated or missing file is one line), identifies it (the family from the
huozi vocabulary, the quant from the file type; the manifest's sha256 confirms an official file,
computed during the repair's single read, or taken from the provenance a repair records), and
then puts a loadable file where `model_folder` says that model lives:

- a legacy split-expert file (or a huozi file missing the turn-ending metadata) is repaired
  into the folder; the user's file is only read;
- a file that loads as it is gets hard-linked when it is on the same file system (instant, no
  second 27 GB), else copied; `move=True` moves it instead (a rename on the same file system).

Nothing is ever replaced by surprise: when another file already has the model's name (a verified
download, an earlier import), the same model again is nothing to do, and a different one is
refused in one line unless the caller asks to replace it or to keep both (`occupied`). The bytes
are staged in `models/.imports/` and renamed into place only once complete, sidecar first; the
user's file is taken away (`move=True`) only after that (`adopt_place`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huozi_local.core import disk
from huozi_local.core.catalog import ModelFamily, get_family, load_families
from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch import hub, occupied
from huozi_local.core.fetch.adopt_place import (
    STAGING_DIR,
    SidecarBackup,
    copy_file,
    put_in_place,
    remove_stale,
    stage,
)
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    imported_model_path,
    read_sidecar,
    write_sidecar,
)
from huozi_local.core.gguf.header import KNOWN_ARCHITECTURES, GGUFFile, quant_of, read_gguf
from huozi_local.core.gguf.repair import needs_repair
from huozi_local.core.progress import ProgressCallback, check_cancel

__all__ = ["STAGING_DIR", "Identity", "ImportResult", "copy_file", "identify", "import_model"]


@dataclass(frozen=True)
class Identity:
    """What a file is, and how we know. `official`: its sha256 is the manifest's."""

    family: str | None
    quant: str | None
    how: str
    official: bool = False

    @property
    def spec(self) -> str | None:
        if self.family and self.quant:
            return f"{self.family}:{self.quant}"
        return None


@dataclass(frozen=True)
class ImportResult:
    path: Path
    spec: str
    """What `--model` (and the settings) call it from now on: FAMILY:QUANT or the file's path."""
    identity: Identity
    method: str  # "linked" | "copied" | "moved" | "repaired" | "already imported" | "already there"
    sha256: str | None = None
    changes: list[str] = field(default_factory=list)
    source_removed: bool = False
    replaced: bool = False
    """Another file had the model's name and `replace=True` put this one in its place."""


def import_model(
    src: str | Path,
    paths: Paths,
    *,
    move: bool = False,
    replace: bool = False,
    keep_both: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ImportResult:
    """Make `src` a model of this installation. Progress stages: 'verify', 'repair' or 'copy'.

    A different file under the model's name is refused (ModelExists) unless `replace` (this one
    takes the name; the old one stays until this one is complete and in place) or `keep_both`
    (this one goes under its own file name in imported/). Raises HuoziError (one line) for a
    file that is not a usable model, Cancelled when `cancel` is set (nothing half-written is
    left behind, the user's file is where it was).
    """
    source = Path(src).expanduser()
    _refuse_staged(source, paths)
    gguf = read_gguf(source)  # missing, not GGUF, truncated: GGUFError, one line
    gguf.check_is_model()  # no tensors or no token list: nothing to chat with, one line
    if gguf.architecture not in KNOWN_ARCHITECTURES:
        raise HuoziError(
            f"{source}: architecture '{gguf.architecture}' is not one huozi-local can run"
        )
    identity = identify(gguf)
    origin = _Origin(str(source.resolve()), source.stat())  # before a move takes it away
    repair_needed = needs_repair(gguf)
    final = (
        imported_model_path(paths, source.name)
        if keep_both
        else destination(paths, source, identity)
    )
    earlier = _earlier_import(source, final, identity)
    if earlier is not None:
        return ImportResult(final, _spec_for(identity, final), earlier, "already imported")
    replacing = occupied.occupied(final)
    if replacing:
        if occupied.holds(final, source, repairs=repair_needed, progress=progress, cancel=cancel):
            return ImportResult(final, _spec_for(identity, final), identity, "already there")
        if not replace:
            own_name = final == imported_model_path(paths, source.name)
            what = identity.spec if final.parent.name == identity.family else final.name
            raise occupied.refusal(final, what or final.name, "import", own_name=own_name)
    staging = paths.models_dir / STAGING_DIR / final.name
    staging.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(staging)
    final.parent.mkdir(parents=True, exist_ok=True)
    backup = SidecarBackup(final)
    placed = False
    sha: str | None
    try:
        if repair_needed:
            sha, changes = _repair(gguf, staging, progress, cancel)
            identity = _confirm(identity, sha, paths)
            method = "repaired"
        else:
            sha, changes = gguf.source_sha256, []
            method = stage(source, staging, move, progress, cancel)
        check_cancel(cancel, "import")  # the last moment at which stopping changes nothing
        write_sidecar(final, _sidecar(origin, identity, method, sha, changes, gguf))
        put_in_place(source if method == "moved" else staging, final, moving=method == "moved")
        placed = True
    except BaseException:
        if not placed:
            backup.restore()
        remove_stale(staging)
        raise
    removed = method == "moved"
    if move and not removed:
        source.unlink()  # only now: the model is complete, on the disk and under its name
        removed = True
    spec = _spec_for(identity, final)
    return ImportResult(final, spec, identity, method, sha, changes, removed, replacing)


def _refuse_staged(source: Path, paths: Paths) -> None:
    """The staging folder is the import's own: it clears a staging name before using it, and
    that name can be the file given (it was deleted)."""
    staging = (paths.models_dir / STAGING_DIR).resolve()
    if source.resolve().is_relative_to(staging):
        raise HuoziError(
            f"{source} is in the import staging folder ({staging}), which import clears; "
            "move it out of there, then import it"
        )


# -- identification --------------------------------------------------------------------------------
def identify(gguf: GGUFFile) -> Identity:
    """The family from the vocabulary, the quant from the file type; the hash comes later."""
    quant = quant_of(gguf)
    if not gguf.is_huozi:
        return Identity(None, quant, f"header: {gguf.architecture}, {quant or 'unknown quant'}")
    family = _family_for(gguf)
    recorded = gguf.source_sha256
    manifest_sha = _manifest_sha(family, quant)
    if recorded and manifest_sha and recorded == manifest_sha:
        return Identity(
            family.name,
            quant,
            f"the sha256 its repair recorded is the official {family.name} {quant}",
            official=True,
        )
    return Identity(family.name, quant, f"header: huozi vocabulary, {quant or 'unknown'} weights")


def _family_for(gguf: GGUFFile) -> ModelFamily:
    """huozi 3.5 only exists as community builds that say so in their name; else huozi 3.0."""
    text = f"{gguf.name} {gguf.path.name}".lower()
    families = load_families()
    if "3.5" in text and "huozi3.5" in families:
        return families["huozi3.5"]
    return get_family("huozi3")


def _manifest_sha(family: ModelFamily, quant: str | None) -> str | None:
    return next((q.sha256 for q in family.quants if q.quant == quant and q.sha256), None)


def _known_sha(identity: Identity, paths: Paths) -> str | None:
    """The published sha256 of this family quant: the manifest's, else a cached hub listing's
    (what the last `models` or `download` learned), so an official file is recognised offline."""
    if identity.family is None:
        return None
    family = get_family(identity.family)
    manifest = _manifest_sha(family, identity.quant)
    if manifest is not None:
        return manifest
    entry = next((q for q in family.quants if q.quant == identity.quant), None)
    if entry is None:
        return None
    for repo_id, source in ((family.repo_id, "hf"), (family.modelscope_id, "modelscope")):
        listing = hub.load_cached_listing(paths, repo_id, source) if repo_id else None
        remote = listing.file(entry.filename) if listing is not None else None
        if remote is not None and remote.sha256:
            return remote.sha256
    return None


def _confirm(identity: Identity, sha: str, paths: Paths) -> Identity:
    """After the one read of the file: is it the official file the manifest (or hub) names?"""
    expected = _known_sha(identity, paths)
    if expected is None:
        return identity
    if sha == expected:
        return Identity(
            identity.family,
            identity.quant,
            f"sha256 matches the official {identity.family} {identity.quant}",
            official=True,
        )
    return Identity(
        identity.family,
        identity.quant,
        f"{identity.how}; its sha256 is not the official file's ({sha[:12]}…)",
    )


# -- where it goes ---------------------------------------------------------------------------------
def destination(paths: Paths, source: Path, identity: Identity) -> Path:
    """A known family quant takes its usual name; anything else keeps its own under imported/."""
    if identity.family and identity.quant:
        family = get_family(identity.family)
        if any(q.quant == identity.quant for q in family.quants):
            return family_model_path(paths, family.name, identity.quant)
    return imported_model_path(paths, source.name)


def _spec_for(identity: Identity, final: Path) -> str:
    if identity.spec and final.parent.name == identity.family:
        return identity.spec
    return str(final)


def _earlier_import(source: Path, final: Path, identity_now: Identity) -> Identity | None:
    """The identity recorded when this very file (same path, size, mtime) was imported before,
    or the file already in place is the source itself (linked or moved)."""
    if not final.exists():
        return None
    record = read_sidecar(final)
    try:
        same = source.samefile(final)
        stat = source.stat()
    except OSError:
        return None
    unchanged = (
        record.get("imported_from") == str(source.resolve())
        and record.get("source_size") == stat.st_size
        and record.get("source_mtime_ns") == stat.st_mtime_ns
    )
    if same and record.get("source") != "import":
        return identity_now  # a model already in place (downloaded): leave its record alone
    if not (same or unchanged) or record.get("source") != "import":
        return None
    return Identity(
        record.get("family"),
        record.get("quant"),
        str(record.get("identified_by", "")),
        record.get("state") in ("verified", "repaired"),
    )


# -- the bytes -------------------------------------------------------------------------------------
def _repair(
    gguf: GGUFFile,
    staging: Path,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> tuple[str, list[str]]:
    """Repair into staging; the source sha256 is hashed during the same read (no second pass)."""
    from huozi_local.core.gguf.repair import repair_gguf

    result = repair_gguf(gguf.path, staging, progress=progress, cancel=cancel)
    if result.output is None:  # pragma: no cover - needs_repair said there was work
        raise HuoziError(f"{gguf.path}: nothing to repair")
    disk.sync_to_disk(staging)
    return result.source_sha256, list(result.changes)


@dataclass(frozen=True)
class _Origin:
    path: str
    stat: os.stat_result


def _sidecar(
    origin: _Origin,
    identity: Identity,
    method: str,
    sha: Any,
    changes: list[str],
    gguf: GGUFFile,
) -> dict[str, Any]:
    """What `models` and a later `download` read: an official file counts as verified."""
    if identity.official:
        state = "repaired" if method == "repaired" else "verified"
    else:
        state = "imported"
    return {
        "source": "import",
        "imported_from": origin.path,
        "source_size": origin.stat.st_size,
        "source_mtime_ns": origin.stat.st_mtime_ns,
        "imported_at": time.time(),
        "method": method,
        "identified_by": identity.how,
        "family": identity.family,
        "quant": identity.quant,
        "sha256": sha if isinstance(sha, str) and sha else None,
        "size": gguf.file_size,
        "state": state,
        "changes": changes,
    }
