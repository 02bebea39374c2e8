"""Which remote file a model spec means, and the size and sha256 that file must have.

`huozi3` with no quant asks the planner for this machine's best fit; huozi 3.5's files are
whatever the hub lists (matched by the manifest's file pattern); the manifest's own sha256 (huozi3
q4_0) must agree with the hub's, so a replaced file on the hub is refused rather than trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from huozi_local.core.catalog import ModelFamily, ModelSpec, get_family
from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError, SourceLacksModel
from huozi_local.core.fetch import hub
from huozi_local.core.fetch.model_folder import family_model_path, hf_model_path

if TYPE_CHECKING:
    from huozi_local.core.planning.hardware import Machine


@dataclass(frozen=True)
class DownloadTarget:
    """One remote file and where its loadable form goes."""

    spec: str
    source: str
    repo_id: str
    filename: str
    final_path: Path
    family: str | None
    quant: str | None
    size: int | None
    sha256: str | None
    revision: str | None
    legacy_expected: bool


def fetch_listing(
    parsed: ModelSpec, paths: Paths, source: str, base: str, token: str | None, offline: bool
) -> hub.RepoListing | None:
    repo_id = repo_for(parsed, source)
    if offline:
        return hub.load_cached_listing(paths, repo_id, source)
    if source == "modelscope":
        from huozi_local.core.fetch import modelscope as modelscope_source

        return modelscope_source.fetch_listing(paths, repo_id, endpoint=base)
    return hub.fetch_hf_listing(paths, repo_id, endpoint=base, token=token)


def repo_for(parsed: ModelSpec, source: str) -> str:
    if parsed.kind == "hf":
        assert parsed.repo_id is not None
        return parsed.repo_id
    assert parsed.family is not None
    family = get_family(parsed.family)
    if source == "modelscope":
        if not family.modelscope_id:
            raise SourceLacksModel(f"{family.name} is not published on ModelScope")
        return family.modelscope_id
    return family.repo_id


def family_with_listing(family: ModelFamily, listing: hub.RepoListing | None) -> ModelFamily:
    """The family's quants as the hub (or its cached listing) describes them right now.

    A family with a fixed manifest keeps every quant it lists (a mirror or a cached listing may
    know only some files); only the sizes and sha256 the hub gives are refreshed.
    """
    if listing is None:
        return family
    refreshed = family.quants_from_listing(listing.as_triples())
    if family.file_pattern:
        return refreshed
    by_file = {q.filename: q for q in refreshed.quants}
    return replace(family, quants=tuple(by_file.get(q.filename, q) for q in family.quants))


def choose_quant(family: ModelFamily, machine: Machine | None) -> str:
    """The planner's choice of quant for `machine` (`download huozi3` with no quant)."""
    from huozi_local.core.planning.planner import choose_plan

    if machine is None:
        names = ", ".join(f"{family.name}:{q.quant}" for q in family.by_quality())
        raise HuoziError(f"which quant of {family.name}? name one ({names})")
    return str(choose_plan(family, machine).quant)


def resolve_target(
    parsed: ModelSpec,
    paths: Paths,
    source: str,
    listing: hub.RepoListing | None,
    machine: Machine | None = None,
) -> DownloadTarget:
    """Which remote file a spec means, with the size and sha256 that file must have.

    A family with no quant gets the planner's choice for `machine` (the caller's Machine:
    core never probes the hardware itself).
    """
    if parsed.kind == "hf":
        assert parsed.repo_id is not None and parsed.filename is not None
        remote = listing.file(parsed.filename) if listing else None
        if listing is not None and remote is None and not listing.from_cache:
            raise HuoziError(f"{parsed.filename} not found in {parsed.repo_id}")
        return DownloadTarget(
            spec=str(parsed),
            source=source,
            repo_id=parsed.repo_id,
            filename=parsed.filename,
            final_path=hf_model_path(paths, parsed.repo_id, parsed.filename),
            family=None,
            quant=None,
            size=remote.size if remote else None,
            sha256=remote.sha256 if remote else None,
            revision=listing.revision if listing else None,
            legacy_expected=False,
        )
    assert parsed.family is not None
    family = family_with_listing(get_family(parsed.family), listing)
    quant = parsed.quant or choose_quant(family, machine)
    entry = family.quant(quant)
    remote = listing.file(entry.filename) if listing else None
    if listing is not None and remote is None and not listing.from_cache:
        raise HuoziError(f"{entry.filename} not found in {listing.repo_id}")
    hub_sha = remote.sha256 if remote else None
    manifest_sha = _manifest_sha(family.name, entry.quant)
    if hub_sha and manifest_sha and hub_sha != manifest_sha:
        raise HuoziError(
            f"{listing.repo_id if listing else family.repo_id}/{entry.filename} on the hub has "
            f"sha256 {hub_sha[:12]}…, not the {manifest_sha[:12]}… this huozi-local knows: "
            "refusing it (update huozi-local, or fetch it as hf:OWNER/REPO/FILE at your own risk)"
        )
    return DownloadTarget(
        spec=f"{family.name}:{entry.quant}",
        source=source,
        repo_id=listing.repo_id if listing else repo_for(parsed, source),
        filename=entry.filename,
        final_path=family_model_path(paths, family.name, entry.quant),
        family=family.name,
        quant=entry.quant,
        size=remote.size if remote and remote.size else (None if listing else entry.size_bytes),
        sha256=hub_sha or manifest_sha,
        revision=listing.revision if listing else None,
        legacy_expected=entry.needs_repair,
    )


def _manifest_sha(family_name: str, quant: str) -> str | None:
    for entry in get_family(family_name).quants:
        if entry.quant == quant:
            return entry.sha256
    return None
