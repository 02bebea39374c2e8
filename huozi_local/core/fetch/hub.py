"""What the hub says about a repository's files, remembered on disk for offline use.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, when it is imported, so a setting made
later (a test, a `--endpoint` flag, the TUI's settings screen) would be silently ignored. Every
function here takes the endpoint and the offline flag explicitly and reads the environment at call
time instead. Hub failures become one-line `HuoziError`s that say what to do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError, connection_failure_reason

DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_HINT = "set HF_ENDPOINT=https://hf-mirror.com to use a mirror, or try --source modelscope"
METADATA_TIMEOUT_S = 20.0


def resolve_endpoint(endpoint: str | None = None) -> str:
    """An explicit endpoint, else HF_ENDPOINT as it is now, else the public hub."""
    chosen = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return chosen.rstrip("/")


def offline_requested(offline: bool = False) -> bool:
    """`--offline`, or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as huggingface_hub reads them."""
    if offline:
        return True
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


@dataclass(frozen=True)
class RemoteFile:
    """One file as the hub lists it. `sha256` is the LFS object id (None for small git files)."""

    repo_id: str
    filename: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    source: str  # "hf" | "modelscope"
    revision: str | None
    files: tuple[RemoteFile, ...]
    fetched_at: float
    from_cache: bool = False

    def file(self, filename: str) -> RemoteFile | None:
        for entry in self.files:
            if entry.filename == filename:
                return entry
        return None

    def as_triples(self) -> list[tuple[str, int, str | None]]:
        """The (filename, size, sha256) form `ModelFamily.quants_from_listing` takes."""
        return [(f.filename, f.size or 0, f.sha256) for f in self.files]


def listing_cache_path(paths: Paths, repo_id: str, source: str = "hf") -> Path:
    return paths.cache_dir / "hub" / source / f"{repo_id.replace('/', '--')}.json"


def save_listing(paths: Paths, listing: RepoListing) -> None:
    target = listing_cache_path(paths, listing.repo_id, listing.source)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "repo_id": listing.repo_id,
        "source": listing.source,
        "revision": listing.revision,
        "fetched_at": listing.fetched_at,
        "files": [asdict(f) for f in listing.files],
    }
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(target)


def load_cached_listing(paths: Paths, repo_id: str, source: str = "hf") -> RepoListing | None:
    """The last listing fetched for this repo, or None (never an error: it is only a cache)."""
    try:
        data = json.loads(listing_cache_path(paths, repo_id, source).read_text(encoding="utf-8"))
        files = tuple(
            RemoteFile(repo_id, f["filename"], f.get("size"), f.get("sha256"))
            for f in data["files"]
        )
        return RepoListing(
            repo_id, source, data.get("revision"), files, float(data["fetched_at"]), True
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetch_hf_listing(
    paths: Paths, repo_id: str, *, endpoint: str | None = None, token: str | None = None
) -> RepoListing:
    """Sizes and LFS sha256 of every file in a hub repo (one model-info call), cached on disk."""
    from huggingface_hub import HfApi

    base = resolve_endpoint(endpoint)
    with translate_hub_errors(base, repo_id):
        info = HfApi(endpoint=base, token=token).model_info(
            repo_id, files_metadata=True, timeout=METADATA_TIMEOUT_S
        )
    files = tuple(
        RemoteFile(
            repo_id,
            sibling.rfilename,
            sibling.lfs.size if sibling.lfs else sibling.size,
            sibling.lfs.sha256 if sibling.lfs else None,
        )
        for sibling in info.siblings or []
    )
    listing = RepoListing(repo_id, "hf", info.sha, files, time.time())
    save_listing(paths, listing)
    return listing


def network_failure_message(base: str, exc: BaseException) -> str:
    reason = connection_failure_reason(exc)
    return f"cannot reach {base} ({reason}): check the network, or {MIRROR_HINT}"


@contextmanager
def translate_hub_errors(base: str, repo_id: str, filename: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub/httpx failures into one actionable line."""
    import httpx2
    from huggingface_hub import errors as hf_errors

    try:
        yield
    except hf_errors.GatedRepoError as exc:
        raise HuoziError(
            f"{repo_id} is gated: accept its terms on {base}/{repo_id}, then set HF_TOKEN "
            "to a token of that account"
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise HuoziError(
            f"repository {repo_id} not found on {base} (check the name; a private or gated "
            "repo needs HF_TOKEN)"
        ) from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise HuoziError(f"revision not found in {repo_id} on {base}") from exc
    except hf_errors.EntryNotFoundError as exc:
        what = filename or "the file"
        raise HuoziError(f"{what} not found in {repo_id} on {base}") from exc
    except hf_errors.OfflineModeIsEnabled as exc:
        raise HuoziError(
            "offline mode is on (HF_HUB_OFFLINE): unset it to download, or use --offline"
        ) from exc
    except hf_errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise HuoziError(
                f"access to {repo_id} denied by {base} (HTTP {status}): set HF_TOKEN to a token "
                "with access"
            ) from exc
        raise HuoziError(f"{base} answered HTTP {status} for {repo_id}: try again later") from exc
    except (httpx2.TransportError, ConnectionError) as exc:
        raise HuoziError(network_failure_message(base, exc)) from exc
