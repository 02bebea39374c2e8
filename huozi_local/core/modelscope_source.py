"""ModelScope (modelscope.cn) as a download source, for people the Hugging Face hub does not reach.

The `modelscope` package is an optional extra (`huozi-local[modelscope]`): it is large, so it is
imported only here and only when asked for. We use it for what only it knows (the file listing
with sizes and sha256, and each file's download URL) and move the bytes with our own resumable,
hashing transfer, so a ModelScope download resumes and verifies exactly like a hub download.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError
from huozi_local.core.hub import RemoteFile, RepoListing, network_failure_message, save_listing

INSTALL_HINT = (
    "--source modelscope needs the modelscope package: run `pipx inject huozi-local modelscope` "
    "(or `pip install 'huozi-local[modelscope]'`)"
)
MODELSCOPE_SITE = "https://www.modelscope.cn"


def require_modelscope() -> ModuleType:
    """The modelscope package, or one line saying how to install it."""
    try:
        import modelscope
    except ImportError as exc:
        raise HuoziError(INSTALL_HINT) from exc
    module: ModuleType = modelscope
    return module


def fetch_listing(paths: Paths, model_id: str) -> RepoListing:
    """Sizes and sha256 of a ModelScope repo's files, cached like the hub's listing."""
    require_modelscope()
    from modelscope.hub.api import HubApi

    with translate_errors(model_id):
        entries = HubApi().get_model_files(model_id, recursive=True)
    files = tuple(
        RemoteFile(model_id, str(e["Path"]), _int_or_none(e.get("Size")), e.get("Sha256") or None)
        for e in entries
        if e.get("Type", "blob") == "blob"
    )
    listing = RepoListing(model_id, "modelscope", "master", files, time.time())
    save_listing(paths, listing)
    return listing


def file_url(model_id: str, filename: str, revision: str | None) -> str:
    from modelscope.hub.file_download import get_file_download_url

    return str(get_file_download_url(model_id, filename, revision or "master"))


def _int_or_none(value: object) -> int | None:
    if isinstance(value, (int, str)):
        try:
            return int(value)
        except ValueError:
            return None
    return None


@contextmanager
def translate_errors(model_id: str, filename: str | None = None) -> Iterator[None]:
    """ModelScope's own exceptions (and the network's) as one line."""
    import httpx2

    try:
        yield
    except HuoziError:
        raise
    except (httpx2.TransportError, ConnectionError) as exc:
        raise HuoziError(network_failure_message(MODELSCOPE_SITE, exc)) from exc
    except httpx2.HTTPStatusError as exc:
        status = exc.response.status_code
        what = f"{filename} in {model_id}" if filename else model_id
        if status == 404:
            raise HuoziError(f"{what} not found on ModelScope") from exc
        raise HuoziError(f"ModelScope answered HTTP {status} for {what}") from exc
    except Exception as exc:  # modelscope raises plain exceptions and requests' errors
        what = f"{filename} in {model_id}" if filename else model_id
        first_line = (str(exc) or type(exc).__name__).splitlines()[0][:160]
        raise HuoziError(f"ModelScope could not serve {what}: {first_line}") from exc
