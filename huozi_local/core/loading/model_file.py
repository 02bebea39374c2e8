"""A model file on this disk with its header, read once for the whole load.

Planning, the measured fit and the engine all need the header (layer sizes, vocabulary,
layout); each step used to read it again. A `ModelFile` carries the parsed `GGUFFile` from the
moment the model is chosen to the moment llama.cpp opens the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huozi_local.core.config import Paths
from huozi_local.core.fetch.model_folder import resolve_local_model
from huozi_local.core.gguf.header import GGUFFile, quant_of, read_gguf


@dataclass(frozen=True)
class ModelFile:
    path: Path
    gguf: GGUFFile
    label: str
    """What a person calls it: the family (huozi3) or the file's name."""
    quant: str
    """The quant from the family's name for it, else from the header ("" when unknown)."""
    spec: str
    """How to name it again (settings.model, --model): FAMILY:QUANT, hf:..., or the path."""
    display_name: str
    """FAMILY:QUANT, or the file's name (the server's model id)."""


def open_model(text: str | None, paths: Paths, default: str = "") -> ModelFile:
    """The model a `--model` argument (or, with none, the saved default) names on this disk,
    with its header (HuoziError in one line when it is not there or not a GGUF file)."""
    resolved = resolve_local_model(text, paths, default)
    gguf = read_gguf(resolved.path)
    gguf.check_is_model()  # before planning: a file with no tensors has nothing to place
    if resolved.family:
        spec = f"{resolved.family}:{resolved.quant}" if resolved.quant else resolved.family
    elif resolved.spec.kind == "hf":
        spec = str(resolved.spec)
    else:
        spec = str(resolved.path)
    return ModelFile(
        path=resolved.path,
        gguf=gguf,
        label=resolved.family or resolved.display_name,
        quant=resolved.quant or quant_of(gguf) or "",
        spec=spec,
        display_name=resolved.display_name,
    )


def model_file_at(path: Path, *, label: str, quant: str, spec: str) -> ModelFile:
    """A file the caller just made ready (a finished download, an import), its header read."""
    gguf = read_gguf(path)
    gguf.check_is_model()
    quant = quant or quant_of(gguf) or ""
    shown = f"{label}:{quant}" if quant and label != path.name else path.name
    return ModelFile(path, gguf, label, quant, spec, shown)
