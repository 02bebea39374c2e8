"""Typed reads of a GGUF header's metadata, each value checked for type and range as it is read.

A header comes from anywhere: a crafted or damaged file puts a string, NaN, infinity, an array
or 2^40 where a count belongs, and a raw value used in arithmetic became a ZeroDivisionError, a
MemoryError or an IndexError deep inside planning or the repair. Every value the app computes
with comes through one of these readers, which refuse a wrong one with a GGUFError naming the
key ("general.alignment is 0; it must be a power of two ..."), so each command says it in one
line whatever it was doing with the header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from huozi_local.core.errors import GGUFError
from huozi_local.core.gguf.byte_format import KVEntry, ValueType

INTEGER_TYPES = frozenset(
    {
        ValueType.UINT8,
        ValueType.INT8,
        ValueType.UINT16,
        ValueType.INT16,
        ValueType.UINT32,
        ValueType.INT32,
        ValueType.UINT64,
        ValueType.INT64,
    }
)
UINT32_MAX = 2**32 - 1


class HeaderValues:
    """The metadata entries of one file, read only through typed, range-checked accessors.

    Each returns None when the key is absent (the caller knows its default) and raises
    GGUFError naming the key when the value is there but wrong.
    """

    def __init__(self, path: Path, kv: Mapping[str, KVEntry]) -> None:
        self.path = path
        self._kv = kv

    def has(self, key: str) -> bool:
        return key in self._kv

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        entry = self._kv.get(key)
        if entry is None:
            return None
        if entry.value_type not in INTEGER_TYPES or not lo <= entry.value <= hi:
            self._refuse(entry, f"a whole number from {lo} to {hi}")
        return int(entry.value)

    def power_of_two(self, key: str, hi: int) -> int | None:
        entry = self._kv.get(key)
        if entry is None:
            return None
        value = entry.value
        if entry.value_type not in INTEGER_TYPES or not 0 < value <= hi or value & (value - 1):
            self._refuse(entry, f"a power of two no larger than {hi}")
        return int(value)

    def string(self, key: str) -> str | None:
        entry = self._kv.get(key)
        if entry is None:
            return None
        if entry.value_type != ValueType.STRING:
            self._refuse(entry, "a string")
        return str(entry.value)

    def strings(self, key: str) -> list[str] | None:
        entry = self._kv.get(key)
        if entry is None:
            return None
        if entry.value_type != ValueType.ARRAY or entry.array_type != ValueType.STRING:
            self._refuse(entry, "an array of strings")
        return list(entry.value)

    def integers(
        self, key: str, lo: int, hi: int, *, length: int | None = None
    ) -> list[int] | None:
        """An array of whole numbers in [lo, hi]; of exactly `length` of them when given."""
        entry = self._kv.get(key)
        if entry is None:
            return None
        wanted = f"an array of whole numbers from {lo} to {hi}"
        if length is not None:
            wanted = f"an array of {length} whole numbers from {lo} to {hi}"
        values = entry.value
        if (
            entry.value_type != ValueType.ARRAY
            or entry.array_type not in INTEGER_TYPES
            or (length is not None and len(values) != length)
            or (values and not (lo <= min(values) and max(values) <= hi))
        ):
            self._refuse(entry, wanted)
        return list(values)  # the parser unpacked an integer type: they are ints already

    def per_layer(self, key: str, n_layers: int, lo: int, hi: int) -> int | None:
        """A number, or one number per layer (llama.cpp takes either for these keys): the
        largest, since the memory model sizes every layer for the widest."""
        entry = self._kv.get(key)
        if entry is None:
            return None
        if entry.value_type != ValueType.ARRAY:
            return self.integer(key, lo, hi)
        values = entry.value
        if (
            entry.array_type not in INTEGER_TYPES
            or not values
            or (n_layers and len(values) != n_layers)
            or not (lo <= min(values) and max(values) <= hi)
        ):
            layers = f"the {n_layers} layers" if n_layers else "the layers"
            self._refuse(entry, f"a whole number from {lo} to {hi}, or one for each of {layers}")
        return int(max(values))

    def _refuse(self, entry: KVEntry, wanted: str) -> NoReturn:
        raise GGUFError(f"{self.path}: {entry.key} is {shown(entry)}; it must be {wanted}")


def shown(entry: KVEntry) -> str:
    """A wrong value as a person can recognise it in one line (never a 57002-entry list)."""
    value = entry.value
    if entry.value_type == ValueType.ARRAY:
        if not value:
            return "an empty array"
        kind = entry.array_type.name.lower() if entry.array_type is not None else "value"
        return f"an array of {len(value)} {kind}"
    if entry.value_type == ValueType.STRING:
        text = str(value)
        return repr(text if len(text) <= 40 else text[:40] + "…")
    if entry.value_type == ValueType.BOOL:
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    return repr(value)
