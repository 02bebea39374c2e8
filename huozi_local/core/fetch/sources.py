"""Where a model can be downloaded from, and which of those places this network reaches right now.

Most people who want huozi are in mainland China, where huggingface.co is usually out of reach
while a mirror (hf-mirror.com, which speaks the hub's protocol) and ModelScope are not. Rather
than let a download fail after a long connect timeout, setup probes every source at once with a
short request, shows each result, and preselects the first one that answered. The probe asks
each site for the huozi repository's metadata, so "reachable" means "this site can serve the
model", not merely "this host answers".

The choice is saved in the settings (`download_source`, `mirror_endpoint`) and `download_args`
turns it into what `download_model` takes, so `huozi-local download` and the app agree.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from huozi_local.core.catalog import DEFAULT_FAMILY, get_family
from huozi_local.core.errors import HuoziError, connection_failure_reason
from huozi_local.core.fetch import hub
from huozi_local.core.fetch import modelscope as modelscope_source

PROBE_TIMEOUT_S = 4.0
MIRROR_PRESET = "https://hf-mirror.com"


class SourceKind(str, Enum):
    """The three kinds of place setup offers; the values are what the settings store."""

    HF = "hf"
    MIRROR = "mirror"
    MODELSCOPE = "modelscope"

    @classmethod
    def parse(cls, text: str) -> SourceKind:
        try:
            return cls(text.strip().lower())
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise HuoziError(f"unknown download source '{text}' (use {known})") from None


@dataclass(frozen=True)
class DownloadSource:
    kind: SourceKind
    endpoint: str

    @property
    def label(self) -> str:
        names = {
            SourceKind.HF: "Hugging Face",
            SourceKind.MIRROR: "Hugging Face mirror",
            SourceKind.MODELSCOPE: "ModelScope 魔搭",
        }
        return f"{names[self.kind]} ({self.endpoint})"

    @property
    def protocol(self) -> str:
        """The `source` argument of `download_model`: a mirror speaks the hub's protocol."""
        return "modelscope" if self.kind is SourceKind.MODELSCOPE else "hf"


def mirror_endpoint(saved: str = "") -> str:
    """The mirror to offer: the saved one, else HF_ENDPOINT naming a mirror, else the preset."""
    if saved.strip():
        return saved.strip().rstrip("/")
    from_env = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if from_env and from_env != hub.DEFAULT_ENDPOINT:
        return from_env
    return MIRROR_PRESET


def default_sources(saved_mirror: str = "") -> list[DownloadSource]:
    """Hugging Face, the mirror, ModelScope: the order setup lists (and prefers) them in."""
    return [
        DownloadSource(SourceKind.HF, hub.DEFAULT_ENDPOINT),
        DownloadSource(SourceKind.MIRROR, mirror_endpoint(saved_mirror)),
        DownloadSource(SourceKind.MODELSCOPE, modelscope_source.resolve_endpoint()),
    ]


def download_args(saved_source: str, saved_mirror: str = "") -> tuple[str, str | None]:
    """(source, endpoint) for `download_model` from the saved choice ("" means the hub as
    HF_ENDPOINT says). An explicit `--source`/`--endpoint` on the command line wins over this."""
    if not saved_source.strip():
        return "hf", None
    kind = SourceKind.parse(saved_source)
    if kind is SourceKind.MIRROR:
        return "hf", mirror_endpoint(saved_mirror)
    return kind.value, None


@dataclass(frozen=True)
class ProbeResult:
    """What one source answered. `reason` says why it cannot be used (the CLI's wording);
    `fix` is the command that makes it usable when only a missing package stands in the way."""

    source: DownloadSource
    reachable: bool
    reason: str = ""
    fix: str = ""
    elapsed_s: float = 0.0

    @property
    def usable(self) -> bool:
        return self.reachable and not self.fix

    @property
    def summary(self) -> str:
        if self.usable:
            return f"reachable ({self.elapsed_s:.1f} s)"
        if self.reachable:
            return f"reachable, but needs: {self.fix}"
        return f"not reachable: {self.reason}"


def modelscope_installed() -> bool:
    """Whether the optional modelscope client is installed (found, not imported: it is big)."""
    return (
        importlib.util.find_spec("modelscope") is not None
        and importlib.util.find_spec("modelscope_hub") is not None
    )


def probe_url(source: DownloadSource, repo_id: str) -> str:
    if source.kind is SourceKind.MODELSCOPE:
        return f"{source.endpoint}/api/v1/models/{repo_id}/repo/files?Revision=master"
    return f"{source.endpoint}/api/models/{repo_id}"


def _repo_for(source: DownloadSource, family_name: str) -> str:
    family = get_family(family_name)
    if source.kind is SourceKind.MODELSCOPE:
        return family.modelscope_id or family.repo_id
    return family.repo_id


def probe_source(
    source: DownloadSource,
    *,
    family: str = DEFAULT_FAMILY,
    timeout_s: float = PROBE_TIMEOUT_S,
    package_check: Callable[[], bool] = modelscope_installed,
) -> ProbeResult:
    """One short GET of the model's metadata: any answer but a server error counts as reached
    only when it is 200 (a 404 means this site does not have the model)."""
    started = time.monotonic()
    url = probe_url(source, _repo_for(source, family))
    request = urllib.request.Request(url, headers={"User-Agent": "huozi-local probe"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(1)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        elapsed = time.monotonic() - started
        return ProbeResult(source, False, connection_failure_reason(exc), "", elapsed)
    elapsed = time.monotonic() - started
    if status != 200:
        return ProbeResult(source, False, f"answered HTTP {status}", "", elapsed)
    fix = ""
    if source.kind is SourceKind.MODELSCOPE and not package_check():
        fix = modelscope_source.INSTALL_COMMAND
    return ProbeResult(source, True, "", fix, elapsed)


def probe_sources(
    sources: Sequence[DownloadSource],
    *,
    family: str = DEFAULT_FAMILY,
    timeout_s: float = PROBE_TIMEOUT_S,
    cancel: threading.Event | None = None,
    on_result: Callable[[ProbeResult], None] | None = None,
    package_check: Callable[[], bool] = modelscope_installed,
) -> list[ProbeResult]:
    """Probe every source at once; results in the order given, each also reported as it lands.

    Returns within about `timeout_s` whatever the network does (a name lookup that hangs is not
    covered by the socket timeout, so the wait itself is bounded), and at once on `cancel`:
    sources that had not answered by then read "timed out" or "cancelled".
    """
    answers: queue.Queue[tuple[int, ProbeResult]] = queue.Queue()

    def run(index: int, source: DownloadSource) -> None:
        try:
            result = probe_source(
                source, family=family, timeout_s=timeout_s, package_check=package_check
            )
        except Exception as exc:  # a probe must never take the others down with it
            result = ProbeResult(source, False, connection_failure_reason(exc))
        answers.put((index, result))

    for index, source in enumerate(sources):
        threading.Thread(target=run, args=(index, source), daemon=True, name="probe").start()
    results: dict[int, ProbeResult] = {}
    deadline = time.monotonic() + timeout_s + 1.0
    while len(results) < len(sources):
        if cancel is not None and cancel.is_set():
            break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            index, result = answers.get(timeout=min(0.1, left))
        except queue.Empty:
            continue
        results[index] = result
        if on_result is not None:
            on_result(result)
    missing = "cancelled" if cancel is not None and cancel.is_set() else "timed out"
    return [
        results.get(i) or ProbeResult(source, False, missing, "", timeout_s)
        for i, source in enumerate(sources)
    ]


def first_usable(results: Sequence[ProbeResult]) -> DownloadSource | None:
    return next((r.source for r in results if r.usable), None)
