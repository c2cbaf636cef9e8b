"""GGUF metadata <-> Python values.

Reading gives plain Python values (``str``, ``int``, ``float``, ``bool``, lists of them) in a
``LazyMetadata`` dict: arrays of ``gguf_header.LAZY_ITEMS`` items or more (a vocabulary: 128k
tokens and 280k merges for Llama 3) are recorded by the header parser as a ``LazyArray``
(their bytes, copied out of the file once its structure is checked) and decoded on first
access of their key, so opening a file costs a skip over them rather than a decode of every
item. ``array_length`` counts an array's items without decoding it.

Writing picks the GGUF type from the value, following what llama.cpp expects for the
common keys: non-negative ``int`` -> ``uint32`` (``int64``/``uint64`` when larger, ``int32``
when negative); lists of ints -> ``int32`` arrays (wider when needed); ``float`` ->
``float32`` when that is exact (values read from GGUF always are), else ``float64``;
``bool``, ``str`` and lists of ``str`` as themselves; a ``gguf.GGUFValue`` (what
``GGUFWriter``'s ``add_*`` helpers record) keeps its own type. Anything else JSON-able (dicts,
nested or mixed lists, empty lists, ``None``) is stored as a JSON string and its key is
listed under ``mlmf.json``, so it comes back as it went in. Tied weights written once are
listed under ``mlmf.tied`` (JSON object alias -> stored name), as for safetensors.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import ItemsView, ValuesView
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from ..errors import FormatError, MLMFError
from ..files import loads_json
from .metadata import JSON_KEYS, RESERVED, TIED_KEY, decode_aliases

_RANGES = [  # (type, lowest, highest), narrowest first
    (GGUFValueType.UINT32, 0, 2**32 - 1),
    (GGUFValueType.INT32, -(2**31), 2**31 - 1),
    (GGUFValueType.INT64, -(2**63), 2**63 - 1),
    (GGUFValueType.UINT64, 0, 2**64 - 1),
]


_U64 = struct.Struct("<Q")


class LazyArray:
    """A top-level metadata array the header parser skipped: decoded by ``value()``, once.

    Args:
        path: the file (named by decoding errors).
        key: the metadata key (named by decoding errors).
        dtype: the numpy dtype of numeric items (``"<i"``...), or None for strings.
        count: the number of items.
        offset: where ``raw`` starts in the file (for error messages).
        raw: the items' bytes as stored (strings: ``u64`` length, then UTF-8 bytes), copied
            out of the file: the parser checked their lengths against it at open, and a later
            change to the file cannot reach them.
    """

    __slots__ = ("path", "key", "dtype", "count", "offset", "_raw", "_value")
    __hash__ = None  # type: ignore[assignment]  # equal to a list, which is unhashable

    def __init__(self, path: Path, key: str, dtype: str | None, count: int, offset: int,
                 raw: bytes) -> None:
        self.path, self.key, self.dtype, self.count, self.offset = path, key, dtype, count, offset
        self._raw: bytes = raw
        self._value: list[Any] | None = None

    def value(self) -> list[Any]:
        """The items as a list (decoded on the first call; the bytes are then released).

        Raises:
            FormatError: a string item that is not UTF-8; the message names the key, the
                item and its offset in the file.
        """
        if self._value is None:
            self._value = self._decode()
            self._raw = b""
        return self._value

    def _decode(self) -> list[Any]:
        if self.dtype is not None:
            values: list[Any] = np.frombuffer(self._raw, self.dtype, self.count).tolist()
            return values
        raw, unpack, pos = self._raw, _U64.unpack_from, 0
        out: list[str] = []
        try:
            for _ in range(self.count):
                n = unpack(raw, pos)[0]
                pos += 8
                out.append(raw[pos : pos + n].decode("utf-8"))
                pos += n
        except UnicodeDecodeError:
            raise FormatError(f"item {len(out)} of {self.key!r} at offset {self.offset + pos} "
                              "is not valid UTF-8", self.path) from None
        return out

    def __len__(self) -> int:
        return self.count

    def __eq__(self, other: object) -> bool:
        return self.value() == (other.value() if isinstance(other, LazyArray) else other)

    def __repr__(self) -> str:
        kind = "strings" if self.dtype is None else np.dtype(self.dtype).name
        return f"<LazyArray {self.key!r}: {self.count} {kind}, decoded on first use>"


class LazyMetadata(dict[str, Any]):
    """GGUF metadata whose ``LazyArray`` values are decoded on first access of their key.

    A dict to every reader: ``m[key]``, ``get``, ``items()``, ``values()``, ``dict(m)``,
    ``{**m}``, ``copy()``, ``==``, ``repr``, ``json.dumps`` and pickling see decoded lists
    (each array is decoded once and stored in its place); ``keys()``, ``in`` and ``len`` decode
    nothing. A decoding error (a string array that is not UTF-8) is raised by the access.
    """

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, LazyArray):
            value = value.value()
            super().__setitem__(key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self[key] if key in self else default

    # a Python-level __iter__ keeps CPython off its copy-the-slots path in dict(m), {**m},
    # copy() and update(m), which then read every value through __getitem__
    def __iter__(self) -> Any:
        return super().__iter__()

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        return ItemsView(self)

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        return ValuesView(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else super().setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self[key]  # noqa: B018 - decoded before it leaves
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        if self:
            self[next(reversed(self.keys()))]  # noqa: B018 - decoded before it leaves
        return super().popitem()

    def decode_all(self) -> None:
        """Decode every array still pending (what ``==`` and ``repr`` need)."""
        for key in list(self.keys()):
            self[key]  # noqa: B018

    def __eq__(self, other: object) -> bool:
        for m in (self, other):
            if isinstance(m, LazyMetadata):
                m.decode_all()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        self.decode_all()
        return super().__repr__()


def array_length(metadata: dict[str, Any], key: str) -> int | None:
    """How many items the array ``metadata[key]`` holds, without decoding it; None when
    ``key`` is absent or not an array. (``len(metadata[key])`` would decode a vocabulary
    to count it.)

    >>> array_length(LazyMetadata(a=[1, 2], b="x"), "a"), array_length({"b": "x"}, "b")
    (2, None)
    """
    value = dict.get(metadata, key)
    return len(value) if isinstance(value, (list, LazyArray)) else None


class Entry(NamedTuple):
    """One key/value as the GGUF writer takes it."""

    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


def _int_type(values: list[int], prefer_signed: bool) -> GGUFValueType | None:
    lo, hi = min(values), max(values)
    ranges = _RANGES[1:2] + _RANGES if prefer_signed else _RANGES
    for vtype, low, high in ranges:
        if low <= lo and hi <= high:
            return vtype
    return None


def _exact_f32(x: float) -> bool:
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0] == x or x != x
    except OverflowError:
        return False


def _plain(value: Any) -> Any:
    """numpy scalars and similar -> the Python value (``.item()``)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (list, str, bytes)) else value


def _typed(key: str, value: Any) -> Entry | None:
    """The GGUF typing of ``value``, or None when it must go through JSON."""
    if isinstance(value, GGUFValue):  # typed already (GGUFWriter's add_* helpers)
        return Entry(key, value.value, value.type, value.sub_type)
    if isinstance(value, bool):
        return Entry(key, value, GGUFValueType.BOOL)
    if isinstance(value, int):
        vtype = _int_type([value], prefer_signed=False)
        return None if vtype is None else Entry(key, value, vtype)
    if isinstance(value, float):
        exact = _exact_f32(value)
        return Entry(key, value, GGUFValueType.FLOAT32 if exact else GGUFValueType.FLOAT64)
    if isinstance(value, str):
        return Entry(key, value, GGUFValueType.STRING)
    if isinstance(value, (list, tuple)) and value:
        items = [_plain(v) for v in value]
        if all(isinstance(v, str) for v in items):
            return Entry(key, items, GGUFValueType.ARRAY, GGUFValueType.STRING)
        if all(isinstance(v, bool) for v in items):
            return Entry(key, items, GGUFValueType.ARRAY, GGUFValueType.BOOL)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            sub = _int_type(items, prefer_signed=True)
            return None if sub is None else Entry(key, items, GGUFValueType.ARRAY, sub)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            floats = [float(v) for v in items]
            exact = all(_exact_f32(v) for v in floats)
            sub = GGUFValueType.FLOAT32 if exact else GGUFValueType.FLOAT64
            return Entry(key, floats, GGUFValueType.ARRAY, sub)
    return None


def encode_metadata(
    metadata: dict[str, Any] | None,
    aliases: dict[str, str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> list[Entry]:
    """User metadata -> typed GGUF entries (non-GGUF values as JSON strings).

    Raises:
        MLMFError: a non-string or reserved key, or a value that is not JSON-serializable.
    """
    entries: list[Entry] = []
    json_keys: list[str] = []
    for key, raw in (metadata or {}).items():
        if not isinstance(key, str) or not key or key in RESERVED:
            raise MLMFError(
                f"metadata key {key!r} must be a non-empty string other than {RESERVED}", path
            )
        value = _plain(raw)
        entry = _typed(key, value)
        if entry is None:
            try:
                entry = Entry(key, json.dumps(value, sort_keys=True), GGUFValueType.STRING)
            except (TypeError, ValueError) as e:
                raise MLMFError(f"metadata {key!r} cannot be stored in GGUF: {e}", path) from None
            json_keys.append(key)
        entries.append(entry)
    if json_keys:
        entries.append(Entry(JSON_KEYS, json_keys, GGUFValueType.ARRAY, GGUFValueType.STRING))
    if aliases:
        entries.append(Entry(TIED_KEY, json.dumps(aliases, sort_keys=True), GGUFValueType.STRING))
    return entries


def decode_metadata(
    raw: dict[str, Any], path: str | os.PathLike[str] | None = None
) -> tuple[LazyMetadata, dict[str, str]]:
    """Values read from a GGUF file -> (metadata with JSON values decoded, tied aliases).

    Arrays not decoded yet (``LazyArray``) stay so: only the keys read here are decoded.
    """
    meta = LazyMetadata((k, v) for k, v in dict.items(raw) if k not in RESERVED)
    json_keys = raw.get(JSON_KEYS, [])
    for key in json_keys if isinstance(json_keys, list) else []:
        if isinstance(key, str) and isinstance(meta.get(key), str):
            meta[key] = loads_json(meta[key], path, f"structured metadata {key!r}")
    return meta, decode_aliases(raw.get(TIED_KEY, "{}"), path)
