"""Where downloaded models live, and which file a `--model` argument refers to on this disk.

Layout under `Paths.models_dir` (the one contract the downloader, engine, TUI and planner share):

    <family>/<family>-<quant>.gguf        ready to load (already repaired when it had to be)
    <family>/<family>-<quant>.gguf.json   sidecar: source repo/file, sha256, state, provenance
    hf/<owner>--<repo>/<file>.gguf        any other GGUF fetched with an `hf:` spec (+ sidecar)
    imported/<file>.gguf                  a file `huozi-local import` could not name a family quant
    .downloads/<source>/<owner>--<repo>/<file>.part   a download in progress (resumable)
    originals/<owner>--<repo>/<file>      a legacy original kept by `download --keep-original`

Downloads in progress and originals awaiting repair live elsewhere (the downloader's business);
only a finished, verified, loadable file ever appears under these names.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huozi_local.core.catalog import (
    DEFAULT_FAMILY,
    ModelSpec,
    get_family,
    load_families,
    parse_model_spec,
    quant_rank,
)
from huozi_local.core.config import Paths
from huozi_local.core.control_text import plain_name
from huozi_local.core.errors import HuoziError, ModelNotDownloaded
from huozi_local.core.gguf.byte_format import GGUF_MAGIC

log = logging.getLogger(__name__)


def family_model_path(paths: Paths, family: str, quant: str) -> Path:
    return paths.models_dir / family / f"{family}-{quant.lower()}.gguf"


def hf_model_path(paths: Paths, repo_id: str, filename: str) -> Path:
    return _under_models(paths, "hf", repo_id.replace("/", "--"), filename)


def imported_model_path(paths: Paths, filename: str) -> Path:
    """Where `import` puts a GGUF that is not a known family quant: under its own name, made of
    text only (bytes that are not UTF-8, a newline or an escape become `_`), so the name can be
    written in its sidecar, shown in `models` and typed as `--model`."""
    return paths.models_dir / "imported" / plain_name(filename)


def imported_models(paths: Paths) -> list[Path]:
    """Files under imported/, newest first (the default when no family model is installed)."""
    return [path for path, _ in imported_entries(paths)]


def imported_entries(paths: Paths) -> list[tuple[Path, os.stat_result]]:
    """`imported_models` with each file's stat."""
    found = model_entries(paths.models_dir / "imported", "*.gguf")
    return sorted(found, key=lambda entry: entry[1].st_mtime, reverse=True)


def model_entries(folder: Path, pattern: str) -> list[tuple[Path, os.stat_result]]:
    """The model files `folder.glob(pattern)` finds, in name order, each with its stat; an entry
    that is no model file is skipped with a note (see `usable_model_stat`)."""
    found: list[tuple[Path, os.stat_result]] = []
    for path in sorted(folder.glob(pattern)):
        status = usable_model_stat(path)
        if status is not None:
            found.append((path, status))
    return found


def usable_model_stat(path: Path) -> os.stat_result | None:
    """The stat of the model file at `path`; None when there is none, or (with one log line) when
    the entry there is no model file: a broken link, a folder, a pipe, a file that cannot be read
    or is not GGUF.

    The models folder is the user's: one stray entry there used to stop `models` and every
    command run without `--model` (a stat of a dangling link raised; a pipe named like a model
    blocked the load forever). Only the entry's type and first four bytes are looked at, so a
    truncated GGUF is still listed (and refused, with its reason, when loaded).
    """
    status, why = _look_at(path)
    if why is not None:
        log.warning("models folder: skipped %s (%s)", path, why)
    return status


def _look_at(path: Path) -> tuple[os.stat_result | None, str | None]:
    """(its stat, None) for a model file; (None, None) when nothing is there; (None, why not)."""
    try:
        status = path.stat()
    except OSError as exc:  # nothing there, a link to nothing, a link loop, no permission
        if path.is_symlink():
            return None, f"a broken link to {path.readlink()}: {exc.strerror or exc}"
        if isinstance(exc, FileNotFoundError):
            return None, None
        return None, f"cannot read it: {exc.strerror or exc}"
    if stat.S_ISDIR(status.st_mode):
        return None, "a folder, not a model file"
    if not stat.S_ISREG(status.st_mode):
        return None, "not a regular file"
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or exc}"
    if magic != GGUF_MAGIC:
        return None, "not a GGUF file"
    return status, None


def downloads_dir(paths: Paths, source: str, repo_id: str) -> Path:
    """Where a download in progress lives: on the final file's disk, so finishing is a rename."""
    return _under_models(paths, ".downloads", source, repo_id.replace("/", "--"))


def partial_download_path(paths: Paths, source: str, repo_id: str, filename: str) -> Path:
    """The `.part` file a download appends to; it survives Ctrl-C and crashes, for resuming."""
    folder = (".downloads", source, repo_id.replace("/", "--"))
    return _under_models(paths, *folder, f"{filename}.part")


def original_copy_path(paths: Paths, repo_id: str, filename: str) -> Path:
    """Where `download --keep-original` leaves a legacy file after its repaired copy verified."""
    return _under_models(paths, "originals", repo_id.replace("/", "--"), filename)


def _under_models(paths: Paths, *parts: str) -> Path:
    """`models_dir / parts`, refused unless it resolves inside the models folder.

    Names come from the user and from the hub (a spec, a repo listing): an absolute name or a
    `..` joined onto a folder would point anywhere on the disk, and a download writes there.
    """
    root = paths.models_dir.expanduser()
    path = root.joinpath(*parts)
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved == resolved_root or not resolved.is_relative_to(resolved_root):
        raise HuoziError(f"refusing {'/'.join(parts)}: it would lie outside {root}")
    return path


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def read_sidecar(model_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(model_path: Path, data: dict[str, Any]) -> None:
    target = sidecar_path(model_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True)
    # A path that is not UTF-8 holds lone surrogates; written as `\udcff` they are JSON escapes
    # that read back as the same path (strict UTF-8 failed halfway and left the .tmp behind).
    encoded = text.encode("utf-8", "backslashreplace")
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_bytes(encoded)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class InstalledModel:
    family: str
    quant: str
    path: Path
    size_bytes: int


def installed_models(paths: Paths) -> list[InstalledModel]:
    """Loadable family models on disk, best quality first within each family."""
    found: list[InstalledModel] = []
    for name in load_families():
        folder = paths.models_dir / name
        prefix = f"{name}-"
        for path, status in model_entries(folder, f"{prefix}*.gguf"):
            quant = path.name[len(prefix) : -len(".gguf")]
            found.append(InstalledModel(name, quant, path, status.st_size))
    found.sort(key=lambda m: (m.family, -quant_rank(m.quant)))
    return found


@dataclass(frozen=True)
class ResolvedModel:
    """A model file that exists on disk, and what it is."""

    path: Path
    spec: ModelSpec
    family: str | None
    quant: str | None

    @property
    def display_name(self) -> str:
        if self.family:
            return f"{self.family}:{self.quant}" if self.quant else self.family
        return self.path.name


def resolve_local_model(text: str | None, paths: Paths, default: str = "") -> ResolvedModel:
    """The file a `--model` argument (or, with none, the saved default) names on this disk.

    Raises HuoziError saying how to download the model when it is not here.
    """
    chosen = (text or default or "").strip()
    if not chosen:
        installed = installed_models(paths)
        preferred = [m for m in installed if m.family == DEFAULT_FAMILY] or installed
        if not preferred:
            imported = imported_models(paths)
            if imported:
                path = imported[0]
                return ResolvedModel(path, ModelSpec("path", path=path), None, None)
            raise ModelNotDownloaded("no model downloaded yet")
        best = preferred[0]
        spec = ModelSpec("family", family=best.family, quant=best.quant)
        return ResolvedModel(best.path, spec, best.family, best.quant)
    spec = parse_model_spec(chosen)
    if spec.kind == "path":
        assert spec.path is not None
        if not spec.path.exists():
            raise HuoziError(f"no such model file: {spec.path}")
        return ResolvedModel(spec.path, spec, None, None)
    if spec.kind == "hf":
        assert spec.repo_id and spec.filename
        path = hf_model_path(paths, spec.repo_id, spec.filename)
        if not path.exists():
            raise ModelNotDownloaded(f"{chosen} is not downloaded", chosen)
        return ResolvedModel(path, spec, None, None)
    assert spec.family is not None
    family = get_family(spec.family)
    if spec.quant:
        family.quant(spec.quant)  # an unknown quant is an error even when nothing is on disk
        path = family_model_path(paths, family.name, spec.quant)
        if not path.exists():
            raise ModelNotDownloaded(f"{chosen} is not downloaded", chosen)
        return ResolvedModel(path, spec, family.name, spec.quant)
    for model in installed_models(paths):
        if model.family == family.name:
            return ResolvedModel(model.path, spec, model.family, model.quant)
    raise ModelNotDownloaded(f"{family.name} is not downloaded", family.name)
