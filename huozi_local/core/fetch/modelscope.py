"""ModelScope (modelscope.cn) as a download source, for people the Hugging Face hub does not reach.

The `modelscope` package is an optional extra (`huozi-local[modelscope]`): it is large, so it is
imported only here and only when asked for. Since 1.40 its hub client lives in `modelscope-hub`,
which it installs; only that client's listing still carries each file's sha256 (the legacy
`modelscope.hub.api.HubApi.get_model_files` now drops it), so the listing comes from there. We use
the client for what only it knows (the file listing with sizes and sha256, and each file's download
URL) and move the bytes with our own resumable, hashing transfer, so a ModelScope download resumes
and verifies exactly like a hub download.

Like `hub`, the endpoint is resolved here, at call time (explicit > MODELSCOPE_ENDPOINT >
MODELSCOPE_DOMAIN > modelscope.cn) and handed to a client configured at that moment, because
modelscope-hub otherwise reads the environment once per process into a global config.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from huozi_local.core.config import Paths
from huozi_local.core.errors import HuoziError, connection_failure_reason
from huozi_local.core.fetch.hub import RemoteFile, RepoListing, save_listing

INSTALL_COMMAND = "pipx inject huozi-local modelscope"
INSTALL_HINT = (
    f"--source modelscope needs the modelscope package: run `{INSTALL_COMMAND}` "
    "(or `pip install 'huozi-local[modelscope]'`)"
)
UPGRADE_HINT = (
    "--source modelscope needs modelscope 1.40 or newer (it brings modelscope-hub): run "
    "`pipx inject huozi-local 'modelscope>=1.40'`"
)
DEFAULT_ENDPOINT = "https://www.modelscope.cn"
DEFAULT_REVISION = "master"
ENDPOINT_HINT = "check the network, or set MODELSCOPE_ENDPOINT to a reachable ModelScope site"


def require_modelscope() -> ModuleType:
    """The modelscope hub client, or one line saying how to install it."""
    try:
        import modelscope  # noqa: F401  (the extra users install; it brings modelscope_hub)
    except ImportError as exc:
        raise HuoziError(INSTALL_HINT) from exc
    try:
        import modelscope_hub
    except ImportError as exc:
        raise HuoziError(UPGRADE_HINT) from exc
    _quiet_client_logging()
    module: ModuleType = modelscope_hub
    return module


def _quiet_client_logging() -> None:
    """modelscope-hub logs INFO lines (and retry warnings) to stderr on its own handler.

    That would break the CLI's one-line errors and scribble over the TUI; we report failures
    ourselves. MODELSCOPE_LOG_LEVEL, when the user sets it, still wins.
    """
    if not os.environ.get("MODELSCOPE_LOG_LEVEL"):
        logging.getLogger("modelscope_hub").setLevel(logging.CRITICAL)


def resolve_endpoint(endpoint: str | None = None) -> str:
    """Explicit endpoint, else MODELSCOPE_ENDPOINT, else MODELSCOPE_DOMAIN, else modelscope.cn."""
    chosen = (
        endpoint
        or os.environ.get("MODELSCOPE_ENDPOINT", "").strip()
        or os.environ.get("MODELSCOPE_DOMAIN", "").strip()
        or DEFAULT_ENDPOINT
    )
    if not chosen.lower().startswith(("http://", "https://")):
        chosen = f"https://{chosen}"  # MODELSCOPE_DOMAIN is traditionally a bare host name
    return chosen.rstrip("/")


def _client(base: str) -> Any:
    """A client with a config read now (MODELSCOPE_HOME, MODELSCOPE_API_TOKEN), not at first use."""
    hub_module = require_modelscope()
    with warnings.catch_warnings():
        # Its config warns that MODELSCOPE_DOMAIN is deprecated; we resolved the endpoint already.
        warnings.simplefilter("ignore")
        return hub_module.HubApi(config=hub_module.HubConfig(endpoint=base))


def fetch_listing(paths: Paths, model_id: str, *, endpoint: str | None = None) -> RepoListing:
    """Sizes and sha256 of a ModelScope repo's files, cached like the hub's listing."""
    base = resolve_endpoint(endpoint)
    with translate_errors(model_id, endpoint=base):
        entries = _client(base).list_repo_files(
            model_id, "model", revision=DEFAULT_REVISION, recursive=True
        )
    files = tuple(
        RemoteFile(model_id, str(entry.path), _int_or_none(entry.size), entry.sha256 or None)
        for entry in entries
        if not entry.is_dir and entry.path
    )
    if not files:
        # The site answers an unknown repo either with 404 or with an empty listing.
        raise HuoziError(f"repository {model_id} not found on {base} (or it has no files)")
    listing = RepoListing(model_id, "modelscope", DEFAULT_REVISION, files, time.time())
    save_listing(paths, listing)
    return listing


def file_url(
    model_id: str, filename: str, revision: str | None, *, endpoint: str | None = None
) -> str:
    """The URL the modelscope client itself would GET (it redirects LFS files to the CDN)."""
    require_modelscope()
    from modelscope.hub.file_download import get_file_download_url

    return str(
        get_file_download_url(
            model_id, filename, revision or DEFAULT_REVISION, endpoint=resolve_endpoint(endpoint)
        )
    )


def _int_or_none(value: object) -> int | None:
    if isinstance(value, (int, str)):
        try:
            return int(value)
        except ValueError:
            return None
    return None


@contextmanager
def translate_errors(
    model_id: str, filename: str | None = None, *, endpoint: str | None = None
) -> Iterator[None]:
    """ModelScope's own exceptions (and the network's) as one line that says what to do."""
    import requests
    from modelscope_hub import errors as ms_errors

    base = resolve_endpoint(endpoint)
    try:
        yield
    except HuoziError:
        raise
    except ms_errors.NotExistError as exc:
        if filename:
            raise HuoziError(f"{filename} not found in {model_id} on {base}") from exc
        raise HuoziError(f"repository {model_id} not found on {base} (check the name)") from exc
    except (ms_errors.AuthenticationError, ms_errors.PermissionDeniedError) as exc:
        raise HuoziError(
            f"access to {model_id} denied by {base} (HTTP {exc.status_code}): run "
            "`modelscope login` or set MODELSCOPE_API_TOKEN to a token with access"
        ) from exc
    except (ms_errors.NetworkError, requests.ConnectionError, ConnectionError) as exc:
        raise HuoziError(
            f"cannot reach {base} ({connection_failure_reason(exc)}): {ENDPOINT_HINT}"
        ) from exc
    except ms_errors.APIError as exc:
        raise HuoziError(
            f"{base} answered HTTP {exc.status_code} for {model_id}: try again later"
        ) from exc
    except ms_errors.HubError as exc:
        raise HuoziError(f"ModelScope could not serve {model_id}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:160]
