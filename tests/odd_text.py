"""Text that rich and Textual would read as markup, and tiny models that carry it in their header.

A model's `general.name`, a tensor's name, a server's model id and whatever a person types are
data: the front ends must show them as they are. `[/INST]` (Mistral's instruction tag) is a
closing tag with no opening one, which made rich raise; `[bold]x[/]` silently loses its tags;
`:fire:` turns into an emoji.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ODD = "[/INST] [bold]x[/] :fire:"
ODD_NAME = f"tiny {ODD}"
"""The `general.name` of the odd models."""
ODD_TENSOR = "x[/INST].[bold]y[/]"
"""A tensor name llama.cpp does not know (so a model holding it only loads in `inspect`)."""


def with_odd_header(
    src: Path, dst: Path, *, odd_tensor: bool = False, name: str = ODD_NAME
) -> Path:
    """A copy of the tiny model `src` whose general.name is `name` (ODD_NAME unless given), plus,
    when asked, one more (tiny) tensor named ODD_TENSOR; every other field and tensor byte is
    copied as it is."""
    import gguf

    from huozi_local.testing.tiny_model import _byte_shape, copy_fields

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    dst.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(dst), arch=arch)
    copy_fields(reader, writer, skip=frozenset({"general.name"}))
    writer.add_name(name)
    for tensor in reader.tensors:
        qtype = gguf.GGMLQuantizationType(int(tensor.tensor_type))
        raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
        shape = _byte_shape([int(n) for n in tensor.shape], qtype)
        writer.add_tensor(tensor.name, raw, raw_shape=shape, raw_dtype=qtype)
    if odd_tensor:
        writer.add_tensor(ODD_TENSOR, np.zeros(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
