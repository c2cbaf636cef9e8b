"""A bounds-checked parser for the GGUF header: metadata values and tensor infos.

Why not ``gguf.GGUFReader`` for reading: it walks every metadata array element by element
through numpy views, so opening a model with a real vocabulary takes tens of seconds
(1M ints + 200K strings: 50 s here), and it trusts counts and lengths, so a hostile file can
make it loop for hours or fail deep inside with an ``IndexError``. This parser reads the
same structure with every read checked against the file size (each problem becomes a
``FormatError`` saying what was expected, what was found, and which file), decodes arrays
of numbers in one ``numpy.frombuffer`` call, and never touches tensor data. The tests
check it against ``GGUFReader`` on the same files.

Arrays of ``LAZY_ITEMS`` items or more are not decoded here: their bytes are copied into a
``gguf_meta.LazyArray``, decoded on first access of the key (``gguf_meta.LazyMetadata``). A
string array must still be walked to find where it ends and to check every length against
the file: ``_Cursor.skip_strings`` does that in a bare ``struct`` loop (about 65 ns a string
here: 25-40 ms for Llama 3's 408k tokens and merges), re-reading with the checked reads only
to explain a length that runs past the end. Reading every byte offset of the array as a
candidate length with numpy measured no faster, and its false candidates (short strings make
three per string) need a sequential pass anyway. UTF-8 is checked when a lazy array is
decoded: a bad item then raises a ``FormatError`` naming the file, the key and the item.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, ``u32`` version, ``u64`` tensor count,
``u64`` KV count; KV pairs (``string`` key, ``u32`` value type, value); tensor infos
(``string`` name, ``u32`` n_dims, ``u64`` dims (innermost first), ``u32`` ggml type,
``u64`` offset); padding to the alignment; tensor data.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..files import open_regular
from .base import check_extent
from .gguf_meta import LazyArray, LazyMetadata

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_NESTING = 3
DEFAULT_ALIGNMENT = 32
# GGUF value type -> struct format of the scalar types; 8 = string, 9 = array
SCALARS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
STRING, ARRAY, UINT32 = 8, 9, 4
LAZY_ITEMS = 256  # top-level arrays this long are decoded on first use (gguf_meta.LazyArray)
_U64 = struct.Struct("<Q")


class TensorEntry(NamedTuple):
    """One tensor info as the header states it (dims innermost first, as stored)."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # relative to the data section
    nbytes: int


class Header(NamedTuple):
    version: int
    metadata: dict[str, Any]  # from our parser a gguf_meta.LazyMetadata (big arrays lazy)
    value_types: dict[str, int]  # key -> GGUF value type
    tensors: list[TensorEntry]
    alignment: int
    data_start: int


class _Cursor:
    """Reads little-endian values from a buffer, refusing to run past its end."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def need(self, n: int, what: str) -> int:
        """Reserve ``n`` bytes; returns their offset."""
        if n < 0 or self.pos + n > self.size:
            raise FormatError(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes",
                self.path,
            )
        at = self.pos
        self.pos += n
        return at

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack_from("<" + fmt, self.buf, self.need(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("Q", what))

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        at = self.need(n, what)
        try:
            return self.buf[at : at + n].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{what} at offset {at} is not valid UTF-8", self.path) from None

    def skip_strings(self, count: int, key: str) -> None:
        """Move past ``count`` length-prefixed strings (items of ``key``) without decoding them.

        The fast loop only adds lengths; when the end it reaches is past the file (or a
        length is too large to be an offset), the checked reads walk the items again and
        raise the error that names the first item that does not fit.
        """
        pos, unpack, buf = self.pos, _U64.unpack_from, self.buf
        try:
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):  # a length ran past the end of the buffer
            pos = self.size + 1
        if pos <= self.size:
            self.pos = pos
            return
        for i in range(count):
            self.need(self.u64(f"the length of item {i} of {key!r}"), f"item {i} of {key!r}")

    def array(self, fmt: str, count: int, what: str) -> list[Any]:
        dtype = np.dtype("<" + fmt)
        at = self.need(count * dtype.itemsize, what)
        values: list[Any] = np.frombuffer(self.buf, dtype, count, at).tolist()
        return values


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in SCALARS:
        return cur.scalar(SCALARS[vtype], f"the value of {key!r}")
    if vtype == STRING:
        return cur.string(f"the string value of {key!r}")
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
    lazy = depth == 0 and count >= LAZY_ITEMS  # nested arrays stay lists all the way down
    if item in SCALARS:
        what = f"the {count} items of {key!r}"
        if not lazy:
            return cur.array(SCALARS[item], count, what)
        dtype = "<" + SCALARS[item]
        at = cur.need(count * struct.calcsize(dtype), what)
        return LazyArray(cur.path, key, dtype, count, at, cur.buf[at : cur.pos])
    # strings and arrays take at least 8 bytes each: the count cannot exceed what is left
    if count > (cur.size - cur.pos) // 8:
        raise FormatError(
            f"metadata {key!r} claims {count} items, more than the {cur.size - cur.pos} bytes "
            "left can hold",
            cur.path,
        )
    if item == STRING and lazy:
        at = cur.pos
        cur.skip_strings(count, key)
        return LazyArray(cur.path, key, None, count, at, cur.buf[at : cur.pos])
    if item == STRING:
        return [cur.string(f"item {i} of {key!r}") for i in range(count)]
    return [_value(cur, item, key, depth + 1) for _ in range(count)]


def read_header(path: Path, block_sizes: dict[int, tuple[int, int]]) -> Header:
    """Parse and validate the header of the GGUF file at ``path``.

    Args:
        path: the file.
        block_sizes: ggml type id -> (block_size, type_size) for every type id known.

    Returns:
        The ``Header``: version, metadata, tensor entries, alignment and data start.

    Raises:
        FormatError: bad magic or version, truncation, bad counts or values, offsets out of
            range, overlapping tensors, unknown ggml types, duplicate keys or names.
        UnsupportedError: a big-endian file.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise FormatError(
                f"truncated: {size} bytes, shorter than the 24-byte GGUF header", path
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _walk(_Cursor(buf, path), block_sizes)


def _walk(cur: _Cursor, block_sizes: dict[int, tuple[int, int]]) -> Header:
    path = cur.path
    magic = bytes(cur.buf[0:4])
    cur.need(4, "the magic")
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
    metadata = LazyMetadata()
    types: dict[str, int] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.u32(f"the value type of {key!r}")
        if key in metadata:
            raise FormatError(f"metadata key {key!r} appears twice", path)
        metadata[key] = _value(cur, vtype, key)
        types[key] = vtype
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and (
        types["general.alignment"] != UINT32 or alignment <= 0 or alignment & (alignment - 1)
    ):
        raise FormatError(
            f"general.alignment must be a uint32 power of two, found {alignment!r}", path
        )
    entries = [_tensor_entry(cur, i, block_sizes) for i in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    _check_spans(path, entries, alignment, data_start, cur.size)
    return Header(version, metadata, types, entries, alignment, data_start)


def _tensor_entry(cur: _Cursor, i: int, block_sizes: dict[int, tuple[int, int]]) -> TensorEntry:
    name = cur.string(f"the name of tensor #{i}")
    n_dims = cur.u32(f"the dimension count of {name!r}")
    if n_dims > MAX_DIMS:
        raise FormatError(
            f"tensor {name!r} has {n_dims} dimensions; GGUF allows {MAX_DIMS}", cur.path
        )
    dims = tuple(cur.u64(f"the dimensions of {name!r}") for _ in range(n_dims))
    check_extent(name, dims, cur.path)  # a 0 beside 2**63 passes the range checks
    type_id = cur.u32(f"the type of {name!r}")
    offset = cur.u64(f"the offset of {name!r}")
    if type_id not in block_sizes:
        raise FormatError(
            f"tensor {name!r} has unknown ggml type {type_id}; known type ids: "
            f"{', '.join(map(str, sorted(block_sizes)))}",
            cur.path,
        )
    block, type_size = block_sizes[type_id]
    if block > 1 and not dims:
        raise FormatError(
            f"tensor {name!r} is a scalar stored as blocks of {block}; block types need rows",
            cur.path,
        )
    if dims and dims[0] % block:
        raise FormatError(
            f"tensor {name!r}: rows of {dims[0]} weights are not a multiple of the type's "
            f"block size {block}",
            cur.path,
        )
    return TensorEntry(name, dims, type_id, offset, math.prod(dims) // block * type_size)


def _check_spans(
    path: Path, entries: list[TensorEntry], alignment: int, data_start: int, size: int
) -> None:
    seen: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    for e in entries:
        if e.name in seen:
            raise FormatError(f"tensor {e.name!r} appears twice", path)
        seen.add(e.name)
        if e.offset % alignment:
            raise FormatError(
                f"tensor {e.name!r}: offset {e.offset} is not a multiple of the alignment "
                f"{alignment}",
                path,
            )
        end = data_start + e.offset + e.nbytes
        if end > size:
            raise FormatError(
                f"tensor {e.name!r}: data [{data_start + e.offset}, {end}) runs past the end of "
                f"the file ({size} bytes); the file is truncated or the offset is wrong",
                path,
            )
        if e.nbytes:
            spans.append((e.offset, e.offset + e.nbytes, e.name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise FormatError(f"tensors {a!r} and {b!r} overlap in the data section", path)
