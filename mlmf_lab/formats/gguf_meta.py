"""GGUF metadata <-> Python values.

Reading gives plain Python values (``str``, ``int``, ``float``, ``bool``, lists of them).
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
from typing import Any, NamedTuple

from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from ..errors import MLMFError
from ..files import loads_json
from .metadata import JSON_KEYS, RESERVED, TIED_KEY, decode_aliases

_RANGES = [  # (type, lowest, highest), narrowest first
    (GGUFValueType.UINT32, 0, 2**32 - 1),
    (GGUFValueType.INT32, -(2**31), 2**31 - 1),
    (GGUFValueType.INT64, -(2**63), 2**63 - 1),
    (GGUFValueType.UINT64, 0, 2**64 - 1),
]


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
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values read from a GGUF file -> (metadata with JSON values decoded, tied aliases)."""
    meta = {k: v for k, v in raw.items() if k not in RESERVED}
    json_keys = raw.get(JSON_KEYS, [])
    for key in json_keys if isinstance(json_keys, list) else []:
        if isinstance(key, str) and isinstance(meta.get(key), str):
            meta[key] = loads_json(meta[key], path, f"structured metadata {key!r}")
    return meta, decode_aliases(raw.get(TIED_KEY, "{}"), path)
