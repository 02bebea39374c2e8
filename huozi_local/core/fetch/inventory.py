"""Every model the app knows about and its state on this disk, for `models` and the TUI.

Reads only the disk and the cached hub listings by default, so it is instant and works offline;
a family whose files come from the hub's listing (huozi 3.5) is listed from the hub once when no
cached listing exists yet and the network is allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huozi_local.core.catalog import DEFAULT_FAMILY, ModelFamily, load_families
from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.fetch import hub
from huozi_local.core.fetch.in_place import InPlaceFiles
from huozi_local.core.fetch.model_folder import (
    family_model_path,
    imported_entries,
    model_entries,
    partial_download_path,
    read_sidecar,
    usable_model_stat,
)

if TYPE_CHECKING:
    from huozi_local.core.planning.hardware import Machine


@dataclass(frozen=True)
class ModelState:
    """One downloadable file. `state`: missing | partial | verified | repaired | imported (by
    `huozi-local import`, not matched to a published sha256) | unverified (a file placed by
    hand, without the sidecar a verified download writes)."""

    family: str
    quant: str
    filename: str
    size_bytes: int | None
    state: str
    path: Path
    spec: str
    repo_id: str
    downloaded_bytes: int = 0
    fits: str | None = None  # the planner's verdict for this machine: fits | partial | no
    sha256: str | None = None
    community: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _family_listing(
    paths: Paths, family: ModelFamily, offline: bool, endpoint: str | None, token: str | None
) -> hub.RepoListing | None:
    cached = hub.load_cached_listing(paths, family.repo_id)
    if cached is not None or offline or hub.offline_requested() or not family.file_pattern:
        return cached
    try:
        return hub.fetch_hf_listing(paths, family.repo_id, endpoint=endpoint, token=token)
    except HuoziError:
        return None


def _fits_by_quant(family: ModelFamily, machine: Machine | None) -> dict[str, str]:
    if machine is None:
        return {}
    from huozi_local.core.planning.planner import rank_quants

    try:
        options = rank_quants(family, machine)
    except HuoziError:
        return {}
    return {str(o.quant): str(o.verdict) for o in options}


def model_states(
    paths: Paths,
    *,
    offline: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    machine: Machine | None = None,
) -> list[ModelState]:
    """Each family's quants (best first) with their state on disk, then any `hf:` downloads.

    `machine`: the caller's, for the "fits here" column (None leaves it empty).
    """
    from huozi_local.core.fetch.targets import family_with_listing

    states: list[ModelState] = []
    families = sorted(load_families().values(), key=lambda f: (f.name != DEFAULT_FAMILY, f.name))
    for family in families:
        listing = _family_listing(paths, family, offline, endpoint, token)
        current = family_with_listing(family, listing)
        fits = _fits_by_quant(current, machine)
        for entry in current.by_quality():
            final = family_model_path(paths, family.name, entry.quant)
            part = partial_download_path(paths, "hf", current.repo_id, entry.filename)
            ms_part = (
                partial_download_path(paths, "modelscope", family.modelscope_id, entry.filename)
                if family.modelscope_id
                else None
            )
            state, have, sha = _state_of(final, [part, ms_part])
            # On disk, the file there is what counts (an import may be another build than the
            # published one); until then, the published size (a partial's percentage).
            size = entry.size_bytes if state in ("missing", "partial") else have
            states.append(
                ModelState(
                    family=family.name, quant=entry.quant, filename=entry.filename,
                    size_bytes=size, state=state, path=final,
                    spec=f"{family.name}:{entry.quant}", repo_id=current.repo_id,
                    downloaded_bytes=have, fits=fits.get(entry.quant),
                    sha256=sha or entry.sha256, community=family.community,
                )
            )  # fmt: skip
    states.extend(_hf_downloads(paths))
    states.extend(_imported_files(paths))
    return states


def _state_of(final: Path, parts: list[Path | None]) -> tuple[str, int, str | None]:
    status = usable_model_stat(final)  # a broken entry is noted and counts as missing
    if status is not None:
        sidecar = read_sidecar(final)
        state = sidecar.get("state")
        if state in ("verified", "repaired", "imported"):
            return str(state), status.st_size, sidecar.get("sha256")
        return "unverified", status.st_size, None
    for part in parts:
        if part is not None and part.exists():
            return "partial", part.stat().st_size, None
    in_place = InPlaceFiles(final)
    if in_place.exists():
        return "partial", in_place.bytes_recorded(), None
    return "missing", 0, None


def _hf_downloads(paths: Paths) -> list[ModelState]:
    found: list[ModelState] = []
    root = paths.models_dir / "hf"
    for model, status in model_entries(root, "*/*.gguf"):
        repo_id = model.parent.name.replace("--", "/", 1)
        sidecar = read_sidecar(model)
        state = sidecar.get("state") if sidecar.get("state") in ("verified", "repaired") else None
        found.append(
            ModelState(
                family="hf", quant="", filename=model.name, size_bytes=status.st_size,
                state=str(state or "unverified"), path=model,
                spec=f"hf:{repo_id}/{model.name}", repo_id=repo_id,
                downloaded_bytes=status.st_size, sha256=sidecar.get("sha256"),
            )
        )  # fmt: skip
    return found


def _imported_files(paths: Paths) -> list[ModelState]:
    """Files `huozi-local import` kept under their own name (no family quant matched them)."""
    found: list[ModelState] = []
    for model, status in imported_entries(paths):
        sidecar = read_sidecar(model)
        size = status.st_size
        found.append(
            ModelState(
                family="imported", quant=str(sidecar.get("quant") or ""), filename=model.name,
                size_bytes=size, state=str(sidecar.get("state") or "unverified"), path=model,
                spec=str(model), repo_id="", downloaded_bytes=size,
                sha256=sidecar.get("sha256"),
            )
        )  # fmt: skip
    return found
