"""Model families from the TOML manifests in `models/`, and what a `--model` argument means.

A manifest names a family's hub repositories, its quantized files (size, sha256, layout), its
architecture (so the planner can size a model before it is downloaded) and its prompt format.
Sampling defaults are the model README's, the same for every family (huozi.DEFAULT_*).
Community families may list files that are refreshed from the hub's file listing:
`quants_from_listing` parses the quant out of each file name with the manifest's pattern.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from huozi_local.core.errors import HuoziError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Bits per weight of llama.cpp quantization types, for a Mixtral-sized model: the order is the
# quality order (more bits, closer to the original weights) and the numbers size files before
# their exact sizes are known.
QUANT_BITS_PER_WEIGHT: dict[str, float] = {
    "iq1_s": 1.56,
    "iq1_m": 1.75,
    "iq2_xxs": 2.06,
    "iq2_xs": 2.31,
    "iq2_s": 2.5,
    "iq2_m": 2.7,
    "q2_k": 2.96,
    "q2_k_s": 2.9,
    "iq3_xxs": 3.06,
    "iq3_xs": 3.3,
    "q3_k_s": 3.5,
    "iq3_s": 3.44,
    "iq3_m": 3.66,
    "q3_k_m": 3.91,
    "q3_k_l": 4.27,
    "iq4_xs": 4.25,
    "iq4_nl": 4.5,
    "q4_0": 4.55,
    "q4_1": 5.0,
    "q4_k_s": 4.58,
    "q4_k_m": 4.89,
    "q5_0": 5.5,
    "q5_1": 6.0,
    "q5_k_s": 5.54,
    "q5_k_m": 5.7,
    "q6_k": 6.56,
    "q8_0": 8.5,
    "bf16": 16.0,
    "f16": 16.0,
    "f32": 32.0,
}


def quant_rank(quant: str) -> float:
    """Quality ordering of a quant name; unknown quants sort below every known one."""
    return QUANT_BITS_PER_WEIGHT.get(quant.lower(), 0.0)


@dataclass(frozen=True)
class Architecture:
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    n_vocab: int
    context_length: int
    rope_theta: float


@dataclass(frozen=True)
class QuantFile:
    quant: str
    filename: str
    size_bytes: int
    layout: str = "merged"  # "legacy-split" files need `repair` before today's llama.cpp loads them
    sha256: str | None = None

    @property
    def needs_repair(self) -> bool:
        return self.layout == "legacy-split"


@dataclass(frozen=True)
class ModelFamily:
    name: str
    display_name: str
    description: str
    repo_id: str
    modelscope_id: str | None
    community: bool
    template: str
    stop_token_ids: tuple[int, ...]
    license: str
    homepage: str
    architecture: Architecture
    quants: tuple[QuantFile, ...]
    file_pattern: str | None = None

    def quant(self, name: str) -> QuantFile:
        wanted = name.lower()
        for quant in self.quants:
            if quant.quant == wanted:
                return quant
        known = ", ".join(q.quant for q in self.quants) or "none listed"
        raise HuoziError(f"{self.name} has no quant '{name}' (available: {known})")

    def by_quality(self) -> list[QuantFile]:
        """Best quality first."""
        return sorted(self.quants, key=lambda q: quant_rank(q.quant), reverse=True)

    def quants_from_listing(self, files: list[tuple[str, int, str | None]]) -> ModelFamily:
        """A copy whose quants come from the hub's listing of (filename, size, sha256)."""
        if not self.file_pattern:
            known = {q.filename: q for q in self.quants}
            refreshed = []
            for filename, size, sha in files:
                if filename in known:
                    old = known[filename]
                    refreshed.append(replace(old, size_bytes=size, sha256=sha or old.sha256))
            return replace(self, quants=tuple(refreshed) or self.quants)
        pattern = re.compile(self.file_pattern)
        layouts = {q.quant: q.layout for q in self.quants}
        found = []
        for filename, size, sha in files:
            match = pattern.match(filename)
            if match:
                quant = match.group("quant").lower()
                layout = layouts.get(quant, "merged")
                found.append(QuantFile(quant, filename, size, layout, sha))
        return replace(self, quants=tuple(found))


def manifest_dirs() -> list[Path]:
    """Installed wheels carry the manifests as huozi_local/models; a checkout has ./models."""
    package = Path(__file__).resolve().parent.parent
    return [package / "models", package.parent / "models"]


def _parse_manifest(path: Path) -> ModelFamily:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        arch = Architecture(**data["architecture"])
        quants = tuple(QuantFile(**q) for q in data.get("quants", []))
        return ModelFamily(
            name=data["name"],
            display_name=data.get("display_name", data["name"]),
            description=data.get("description", ""),
            repo_id=data["repo_id"],
            modelscope_id=data.get("modelscope_id"),
            community=bool(data.get("community", False)),
            template=data.get("template", "embedded"),
            stop_token_ids=tuple(data.get("stop_token_ids", [])),
            license=data.get("license", ""),
            homepage=data.get("homepage", ""),
            architecture=arch,
            quants=quants,
            file_pattern=data.get("file_pattern"),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise HuoziError(f"model manifest {path.name} is malformed: {exc}") from exc


@cache
def load_families() -> dict[str, ModelFamily]:
    """Every family shipped with the app, by name."""
    for folder in manifest_dirs():
        manifests = sorted(folder.glob("*.toml"))
        if manifests:
            families = [_parse_manifest(p) for p in manifests]
            return {f.name: f for f in families}
    raise HuoziError("no model manifests found: the installation is incomplete")


def get_family(name: str) -> ModelFamily:
    families = load_families()
    try:
        return families[name]
    except KeyError:
        raise HuoziError(
            f"unknown model family '{name}' (known: {', '.join(sorted(families))})"
        ) from None


DEFAULT_FAMILY = "huozi3"


@dataclass(frozen=True)
class ModelSpec:
    """What the user named with --model: a family (optionally with a quant), a file, or hf:."""

    kind: str  # "family" | "path" | "hf"
    family: str | None = None
    quant: str | None = None
    path: Path | None = None
    repo_id: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        if self.kind == "path":
            return str(self.path)
        if self.kind == "hf":
            return f"hf:{self.repo_id}/{self.filename}"
        return f"{self.family}:{self.quant}" if self.quant else str(self.family)


def parse_model_spec(text: str) -> ModelSpec:
    """`huozi3`, `huozi3:q2_k`, `hf:OWNER/REPO/FILE.gguf`, or a path to a .gguf file."""
    text = text.strip()
    if not text:
        raise HuoziError("empty model name")
    if text.startswith("hf:"):
        parts = text[3:].split("/")
        if len(parts) < 3 or not parts[-1].endswith(".gguf"):
            raise HuoziError(f"'{text}' is not hf:OWNER/REPO/FILE.gguf")
        _check_hub_path_parts(text, parts)
        return ModelSpec("hf", repo_id="/".join(parts[:2]), filename="/".join(parts[2:]))
    looks_like_path = text.endswith(".gguf") or "/" in text or "\\" in text or text.startswith(".")
    if looks_like_path:
        return ModelSpec("path", path=Path(text).expanduser())
    family, _, quant = text.partition(":")
    get_family(family)
    return ModelSpec("family", family=family, quant=quant.lower() or None)


def _check_hub_path_parts(text: str, parts: list[str]) -> None:
    """A hub spec names files under the models folder, so its parts must stay relative names.

    `hf:a/b//tmp/x.gguf` (an empty part makes an absolute path) or `..` would otherwise let a
    download, or a file it is looked up as, land outside the models folder.
    """
    for part in parts:
        if part in ("", ".", "..") or "\\" in part or "\x00" in part or ":" in part:
            shown = part or "an empty part"
            raise HuoziError(
                f"'{text}' is not hf:OWNER/REPO/FILE.gguf: {shown!s} is not allowed in a hub path"
            )
