"""A bounds-checked walk over a GGUF header, before ``gguf.GGUFReader`` touches it.

``GGUFReader`` trusts the counts and lengths it reads: a hostile length can make it loop
for a very long time or fail deep inside with an ``IndexError``. ``check_header`` walks the
same structure with every read checked against the file size, so each problem becomes a
``FormatError`` that says what was expected, what was found, and which file. It reads only
the header (through the memory map), never tensor data.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, ``u32`` version, ``u64`` tensor count,
``u64`` KV count; KV pairs (``string`` key, ``u32`` value type, value); tensor infos
(``string`` name, ``u32`` n_dims, ``u64`` dims (innermost first), ``u32`` ggml type,
``u64`` offset); padding to the alignment; tensor data.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import NamedTuple

from ..errors import FormatError, UnsupportedError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_NESTING = 3
DEFAULT_ALIGNMENT = 32
# value type -> struct format for the scalar types; 8 = string, 9 = array
SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY = 8, 9


class TensorEntry(NamedTuple):
    """One tensor info as the header states it (dims innermost first, as stored)."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # relative to the data section


class Header(NamedTuple):
    version: int
    tensors: list[TensorEntry]
    alignment: int
    data_start: int


class _Cursor:
    """Reads little-endian values from a buffer, refusing to run past its end."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes",
                self.path,
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(out)

    def unpack(self, fmt: str, what: str) -> int | float | bool:
        raw = self.take(struct.calcsize("<" + fmt), what)
        value: int | float | bool = struct.unpack("<" + fmt, raw)[0]
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", what))

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            where = self.pos - n
            raise FormatError(f"{what} at offset {where} is not valid UTF-8", self.path) from None


def _skip_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> int | float | bool | None:
    """Step over one value; returns it when it is a scalar (for ``general.alignment``)."""
    if vtype in SCALARS:
        return cur.unpack(SCALARS[vtype], f"the value of {key!r}")
    if vtype == STRING:
        cur.string(f"the string value of {key!r}")
        return None
    if vtype != ARRAY:
        raise FormatError(
            f"metadata {key!r} has value type {vtype}; expected one of "
            f"{sorted([*SCALARS, STRING, ARRAY])} (GGUF value types)",
            cur.path,
        )
    if depth >= MAX_NESTING:
        raise FormatError(f"metadata {key!r}: arrays nested deeper than {MAX_NESTING}", cur.path)
    item = cur.u32(f"the array type of {key!r}")
    count = cur.u64(f"the array length of {key!r}")
    if item in SCALARS:
        cur.take(count * struct.calcsize(SCALARS[item]), f"the {count} items of {key!r}")
        return None
    # strings and arrays take at least 8 bytes each: the count cannot exceed what is left
    if count > (cur.size - cur.pos) // 8:
        raise FormatError(
            f"metadata {key!r} claims {count} items, more than the {cur.size - cur.pos} bytes "
            "left can hold",
            cur.path,
        )
    for _ in range(count):
        _skip_value(cur, item, key, depth + 1)
    return None


def check_header(path: Path, block_sizes: dict[int, tuple[int, int]]) -> Header:
    """Validate the header of the GGUF file at ``path``.

    Args:
        path: the file.
        block_sizes: ggml type id -> (block_size, type_size) for every type id known.

    Returns:
        The ``Header``: version, tensor entries, alignment and data start.

    Raises:
        FormatError: bad magic or version, truncation, bad counts, offsets out of range,
            overlapping tensors, unknown ggml types, duplicate names.
        UnsupportedError: a big-endian file.
    """
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise FormatError(
                f"truncated: {size} bytes, shorter than the 24-byte GGUF header", path
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _walk(_Cursor(buf, path), block_sizes)


def _walk(cur: _Cursor, block_sizes: dict[int, tuple[int, int]]) -> Header:
    path = cur.path
    magic = cur.take(4, "the magic")
    if magic != MAGIC:
        raise FormatError(f"bad magic {magic!r}; expected {MAGIC!r}", path)
    version = cur.u32("the version")
    if version & 0xFFFF == 0 and int.from_bytes(struct.pack("<I", version), "big") in VERSIONS:
        raise UnsupportedError("big-endian GGUF files are not supported", path)
    if version not in VERSIONS:
        known = ", ".join(map(str, VERSIONS))
        raise FormatError(f"GGUF version {version}; supported: {known}", path)
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    # each KV takes >= 13 bytes (key length, type, 1-byte value), each tensor info >= 24
    if n_kv * 13 + n_tensors * 24 > cur.size - cur.pos:
        raise FormatError(
            f"header claims {n_tensors} tensors and {n_kv} metadata entries, more than the "
            f"{cur.size} bytes of the file can hold",
            path,
        )
    alignment = DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.u32(f"the value type of {key!r}")
        value = _skip_value(cur, vtype, key)
        if key == "general.alignment":
            if vtype != 4 or not isinstance(value, int) or value <= 0 or value & (value - 1):
                raise FormatError(
                    f"general.alignment must be a uint32 power of two, found {value!r}", path
                )
            alignment = value
    entries = [_tensor_entry(cur, i, block_sizes) for i in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    _check_spans(path, entries, block_sizes, alignment, data_start, cur.size)
    return Header(version, entries, alignment, data_start)


def _tensor_entry(cur: _Cursor, i: int, block_sizes: dict[int, tuple[int, int]]) -> TensorEntry:
    name = cur.string(f"the name of tensor #{i}")
    n_dims = cur.u32(f"the dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        raise FormatError(
            f"tensor {name!r} has {n_dims} dimensions; GGUF allows {MAX_DIMS}", cur.path
        )
    dims = tuple(cur.u64(f"the dimensions of {name!r}") for _ in range(n_dims))
    type_id = cur.u32(f"the type of {name!r}")
    offset = cur.u64(f"the offset of {name!r}")
    if type_id not in block_sizes:
        raise FormatError(
            f"tensor {name!r} has unknown ggml type {type_id}; known type ids: "
            f"{', '.join(map(str, sorted(block_sizes)))}",
            cur.path,
        )
    return TensorEntry(name, dims, type_id, offset)


def _check_spans(
    path: Path,
    entries: list[TensorEntry],
    block_sizes: dict[int, tuple[int, int]],
    alignment: int,
    data_start: int,
    size: int,
) -> None:
    seen: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for e in entries:
        if e.name in seen:
            raise FormatError(f"tensor {e.name!r} appears twice", path)
        seen.add(e.name)
        block, type_size = block_sizes[e.type_id]
        if e.dims and e.dims[0] % block:
            raise FormatError(
                f"tensor {e.name!r}: rows of {e.dims[0]} weights are not a multiple of the "
                f"type's block size {block}",
                path,
            )
        nbytes = math.prod(e.dims) // block * type_size
        if e.offset % alignment:
            raise FormatError(
                f"tensor {e.name!r}: offset {e.offset} is not a multiple of the alignment "
                f"{alignment}",
                path,
            )
        end = data_start + e.offset + nbytes
        if end > size:
            raise FormatError(
                f"tensor {e.name!r}: data [{data_start + e.offset}, {end}) runs past the end of "
                f"the file ({size} bytes); the file is truncated or the offset is wrong",
                path,
            )
        if nbytes:
            spans.append((e.offset, e.offset + nbytes, e.name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise FormatError(f"tensors {a!r} and {b!r} overlap in the data section", path)
