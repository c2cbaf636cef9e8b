"""The GGUF header as ``gguf.GGUFReader`` (the gguf package's reader) reads it.

The second header source behind ``GGUFFile(path, reader="gguf")``; the default is our own
parser (``gguf_header``). Both return the same ``Header``: metadata as plain Python values
(nested arrays kept nested; ours decodes long arrays on first access, this one at once), the
GGUF value type of each key, tensor entries with dims
innermost first and offsets relative to the data section. What differs is what is checked:
``GGUFReader`` believes the counts a file states (an array of 2**60 bytes keeps it busy for
hours), cuts short a string that runs past the end of the file instead of refusing it,
accepts misaligned or overlapping tensor offsets, more than 4 dimensions and any nesting
of arrays, and reports problems in whatever numpy or Python raises first; each such error
becomes a ``FormatError`` naming the file. ``GGUFFile`` therefore runs our parser first
(DESIGN's bad-input rule: no hang, no memory blow-up) and only then this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError, MLMFError, UnsupportedError
from .gguf_header import ARRAY, STRING, Header, TensorEntry

if TYPE_CHECKING:
    from gguf import GGUFReader, ReaderField

# fields GGUFReader adds for the fixed header, before the file's own key/value pairs
HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")
KEY_PARTS = 3  # a key/value field's parts start with key length, key bytes, value type


def read_header_with_gguf(path: Path, block_sizes: dict[int, tuple[int, int]]) -> Header:
    """Read the header of the GGUF file at ``path`` with ``gguf.GGUFReader``.

    Args:
        path: the file.
        block_sizes: ggml type id -> (block_size, type_size); a tensor of any other type
            is refused, as our parser refuses it.

    Returns:
        The same ``Header`` that ``gguf_header.read_header`` returns for the file.

    Raises:
        FormatError: anything ``GGUFReader`` fails on, or an unknown ggml type.
        UnsupportedError: a big-endian file (GGUFReader reads it; our memory map cannot).
        MLMFError: the file cannot be read at all.

    Example:
        >>> header = read_header_with_gguf(Path("model.gguf"), sizes)  # doctest: +SKIP
        >>> header.metadata["general.architecture"]  # doctest: +SKIP
        'llama'
    """
    from gguf import GGUFEndian, GGUFReader

    try:
        reader = GGUFReader(path, "r")
        header = None if reader.endianess == GGUFEndian.BIG else _header(reader)
    except OSError as e:
        raise MLMFError(f"cannot read the file ({e.strerror or e})", path) from None
    except Exception as e:  # a bad file fails in whatever gguf, numpy or Python raises first
        raise FormatError(
            f"gguf.GGUFReader could not read the file ({type(e).__name__}: {e}); open it with "
            "reader='mlmf' (the default) for a checked diagnosis",
            path,
        ) from None
    if header is None:
        raise UnsupportedError("big-endian GGUF files are not supported", path)
    for t in header.tensors:
        if t.type_id not in block_sizes:
            raise FormatError(
                f"tensor {t.name!r} has unknown ggml type {t.type_id}; known type ids: "
                f"{', '.join(map(str, sorted(block_sizes)))}",
                path,
            )
    return header


def _header(reader: GGUFReader) -> Header:
    """``GGUFReader``'s fields and tensors -> our ``Header`` (may raise anything gguf does)."""
    metadata: dict[str, Any] = {}
    value_types: dict[str, int] = {}
    for key, field in reader.fields.items():
        if key in HEADER_FIELDS:
            continue
        metadata[key] = _value(field)
        value_types[key] = int(field.types[0])
    data_start = int(reader.data_offset)
    tensors = [
        TensorEntry(
            t.name,
            tuple(int(d) for d in t.shape),  # as stored: innermost first
            int(t.tensor_type),
            int(t.data_offset) - data_start,  # GGUFReader's offsets are absolute
            int(t.n_bytes),
        )
        for t in reader.tensors
    ]
    version = int(reader.fields["GGUF.version"].contents())
    return Header(version, metadata, value_types, tensors, int(reader.alignment), data_start)


def _value(field: ReaderField) -> Any:
    """One field's value; ``contents()`` flattens arrays of arrays, so those are walked."""
    if field.types[:2] == [ARRAY, ARRAY]:
        return _nested(field.parts, KEY_PARTS)[0]
    return field.contents()


def _nested(parts: list[np.ndarray[Any, Any]], i: int) -> tuple[list[Any], int]:
    """The array whose item type is ``parts[i]`` (then its count, then its items), and the
    index of the part after it. Strings take two parts (length, bytes), scalars one."""
    item, count = int(parts[i][0]), int(parts[i + 1][0])
    i += 2
    values: list[Any] = []
    for _ in range(count):
        value: Any
        if item == ARRAY:
            value, i = _nested(parts, i)
        elif item == STRING:
            value, i = parts[i + 1].tobytes().decode("utf-8"), i + 2
        else:
            value, i = parts[i].tolist()[0], i + 1
        values.append(value)
    return values, i
