"""safetensors files: strict header validation, then lazy memory-mapped tensors; the writer.

The header (8-byte little-endian length + JSON) is validated here so that every
problem gets a message naming the file; tensor data is read through the
``safetensors`` package's ``safe_open`` (memory-mapped, no copy on CPU). ``int8``/``int4``
weights are stored as their parts and read back as one tensor (``safetensors_quant``).

The one safetensors writer of the lab (``save_state_dict``, sharded folders and checkpoints
all use it) lays the format out itself (``encode_safetensors``: header padded to 8 bytes,
tensor bytes by falling alignment, as the safetensors package writes them) and writes each
tensor from its own memory, hashing the file as it goes (``write.write_views``). The
safetensors package reads the files back (the tests check it).
"""

from __future__ import annotations

import json
import math
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .. import atomic, events
from ..errors import FormatError, MLMFError
from ..files import loads_json, open_regular
from ..progress import Progress
from ..quant.base import QTensor, dequantize
from .base import TORCH_TO_ST, TensorInfo, WeightFile, check_extent, dtype_name, torch_dtype
from .metadata import QUANT_KEY, QUANTIZATION_VERSION_KEY, decode_metadata, encode_metadata
from .registry import Format, Writer, register_format, register_writer
from .safetensors_quant import SCHEMES, QuantEntry, assemble, quantize_parts, read_entries
from .write import dedupe_shared, sha256_of, tensor_hash_views, tensor_view, write_views

MAX_HEADER = 100 * 1024 * 1024  # the safetensors package's own limit


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and validate a safetensors header; returns (infos, raw metadata, data start)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        if len(first) < 8:
            raise FormatError(
                f"truncated: {size} bytes, shorter than the 8-byte header length", path
            )
        (n,) = struct.unpack("<Q", first)
        if n > MAX_HEADER or 8 + n > size:
            raise FormatError(
                f"header length {n} runs past the end of the file ({size} bytes); "
                "the file is truncated or not safetensors",
                path,
            )
        raw = f.read(n)
    header = loads_json(raw, path, "header", expect=dict)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise FormatError("__metadata__ must map strings to strings", path)
    data_start = 8 + n
    data_size = size - data_start
    infos: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        infos[name] = _entry_info(path, name, entry, data_start, data_size)
        begin, end = entry["data_offsets"]
        if end > begin:
            spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise FormatError(f"tensors {a!r} and {b!r} overlap in the data section", path)
    return infos, meta, data_start


def _entry_info(path: Path, name: str, entry: Any, start: int, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise FormatError(f"tensor {name!r}: expected dtype, shape and data_offsets", path)
    dtype = torch_dtype(entry["dtype"], path)
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(f"tensor {name!r}: shape {shape!r} is not a list of sizes", path)
    check_extent(name, shape, path)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
    ):
        raise FormatError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]", path)
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise FormatError(
            f"tensor {name!r}: data_offsets [{begin}, {end}] out of range; "
            f"the data section holds {data_size} bytes",
            path,
        )
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise FormatError(
            f"tensor {name!r}: {end - begin} bytes for shape {shape} of {entry['dtype']}, "
            f"expected {expected}",
            path,
        )
    return TensorInfo(
        name, tuple(shape), dtype_name(dtype), end - begin, os.fspath(path), start + begin
    )


class SafetensorsFile(WeightFile):
    """One ``.safetensors`` file, memory-mapped."""

    format = "safetensors"

    def __init__(self, path: Path) -> None:
        infos, raw_meta, _ = read_header(path)
        meta, aliases = decode_metadata(raw_meta, path)
        self._quant: dict[str, QuantEntry] = {}
        if QUANT_KEY in raw_meta:
            infos, self._quant = read_entries(raw_meta[QUANT_KEY], infos, path)
        super().__init__(path=path, metadata=meta, _infos=infos, aliases=aliases)
        # stored keys of the int8/int4 scales and zeros, read with their weights
        self.parts = {p.key for e in self._quant.values() for p in e.params.values()}
        try:
            self._handle: Any = safe_open(os.fspath(path), framework="pt", device="cpu")
        except (SafetensorError, OSError) as e:
            raise FormatError(f"safetensors refused the file: {e}", path) from None

    def _open(self, name: str) -> Any:
        """The ``safe_open`` handle, for reading tensor ``name``; an error once closed."""
        if self._handle is None:
            raise self.closed_error(name)
        return self._handle

    def _read(self, info: TensorInfo) -> torch.Tensor:
        handle = self._open(info.name)
        entry = self._quant.get(info.name)
        if entry is None:
            return handle.get_tensor(info.name)
        return dequantize(assemble(entry, handle.get_tensor), dtype=info.torch_dtype)

    def spans(self, name: str) -> list[tuple[str, int, int]]:
        entry = self._quant.get(name)
        if entry is None:
            return super().spans(name)
        return [(i.file, i.offset, i.nbytes) for i in entry.stored]

    def raw(self, name: str) -> QTensor | torch.Tensor:
        """An ``int8``/``int4`` tensor as its ``QTensor`` (no dequantization); others as stored."""
        self.info(name)
        handle = self._open(name)
        entry = self._quant.get(name)
        return handle.get_tensor(name) if entry is None else assemble(entry, handle.get_tensor)

    def get_slice(self, name: str) -> Any:
        """A lazy slice object: ``get_slice(name)[a:b]`` reads only those rows."""
        quant = self.info(name).quant
        if quant:
            raise MLMFError(f"tensor {name!r} is stored as {quant}; read it whole with "
                            "tensor() or raw()", self.path)
        return self._open(name).get_slice(name)

    def close(self) -> None:
        self._handle = None


def _detect(path: Path, head: bytes) -> bool:
    if len(head) < 10 or path.is_dir():
        return False
    (n,) = struct.unpack("<Q", head[:8])
    # A JSON header starts with "{"; a length that cannot fit still says "safetensors, broken".
    return head[8:9] == b"{" or (n > 0 and head[8:9] in (b" ", b"\n"))


def check_dtypes(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a dtype safetensors has no code for, naming the tensor and the file."""
    for name, t in tensors.items():
        if t.dtype not in TORCH_TO_ST:
            raise MLMFError(
                f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store; "
                f"supported: {', '.join(dtype_name(d) for d in TORCH_TO_ST)}", path
            )


def encode_safetensors(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, Any] | None = None,
    quant: str | None = None,
) -> list[memoryview]:
    """A safetensors file's bytes as views: the header, then each tensor's own memory.

    Tied tensors are stored once and listed under ``mlmf.tied``; with ``quant`` (``"int8"``
    or ``"int4"``) weights are stored as their parts (``safetensors_quant``). Data is laid
    out by falling element size, so every tensor is aligned to its dtype (as safetensors
    does); the header lists tensors in the caller's order, so readers that keep JSON order
    (``ml.open_weights``) give back the model's order.

    Args:
        path: the file the bytes are for; only named in error messages.

    Raises:
        MLMFError: a dtype safetensors cannot store, a tensor on the meta device, bad
            metadata, or a tensor ``quant`` cannot hold (inf/nan).
    """
    kept, aliases = dedupe_shared(tensors)
    check_dtypes(kept, path)
    # GGUF's block-layout version says nothing about the tensors written here
    given = {k: v for k, v in (metadata or {}).items() if k != QUANTIZATION_VERSION_KEY}
    header_meta = encode_metadata(given, aliases)
    if quant is not None:
        kept, header_meta[QUANT_KEY] = quantize_parts(kept, quant, path, aliases)
    entries: dict[str, Any] = {}
    views: list[memoryview] = []
    offset = 0
    for name in sorted(kept, key=lambda n: (-kept[n].element_size(), n)):
        t = kept[name]
        view = tensor_view(t)
        entries[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + view.nbytes]}
        offset += view.nbytes
        if view.nbytes:
            views.append(view)
    header: dict[str, Any] = {"__metadata__": header_meta}
    header.update((name, entries[name]) for name in kept)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return [memoryview(struct.pack("<Q", len(raw)) + raw), *views]


def write_safetensors(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, Any] | None = None,
    quant: str | None = None,
    progress: Progress = False,
) -> str:
    """Write one safetensors file as a new file; returns its sha256, hashed while written.

    For a folder written as a whole (a checkpoint, a sharded save) where the folder is
    what gets replaced atomically; ``save_safetensors`` replaces a single file.

    Args:
        tensors: name -> tensor; tensors sharing storage are written once (listed as tied).
        path: a new file (an existing one is an error).
        metadata: JSON-able values for the header's ``__metadata__``.
        quant: ``"int8"`` or ``"int4"`` to store the weights quantized.
        progress: a progress bar for files of at least 256 MiB, or a function told
            ``(bytes written, total)``.

    Returns:
        The hex sha256 of the file's bytes.

    Raises:
        MLMFError: see ``encode_safetensors``. FileExistsError: ``path`` exists.
    """
    views = encode_safetensors(tensors, path, metadata, quant)
    return write_views(views, path, progress=progress)


def save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    quant: str | None = None,
) -> dict[str, str]:
    """``save_state_dict`` for ``.safetensors``: replace ``path`` atomically.

    Returns:
        ``{file name: sha256}``.
    """
    if max_shard_size is not None:
        raise MLMFError("max_shard_size needs a folder target (the HF sharded layout)", path)
    views = encode_safetensors(tensors, path, metadata, quant)
    if quant is not None or not events.recording():
        with atomic.replacing(path) as tmp:
            digest = write_views(views, tmp, label=path.name)
        return {path.name: digest}
    # A lineage store records this save: it needs the file's tensor hash, which is the
    # state dict's; hashed from the same memory, so that the store does not read the file
    # back (a second pass over the disk). It starts once the bytes are written and runs while
    # the disk flushes them: started with the writing, a third busy thread slows the writing.
    hashed = tensor_hash_views(dedupe_shared(tensors)[0])
    with ThreadPoolExecutor(1) as pool:
        tensor_hash: list[Future[str]] = []
        with atomic.replacing(path) as tmp:
            digest = write_views(views, tmp, label=path.name, written=lambda: tensor_hash.append(
                pool.submit(sha256_of, hashed)))
        events.report_hash(path, tensor_hash[0].result(), "tensors")
    return {path.name: digest}


register_format(Format("safetensors", _detect, SafetensorsFile, priority=20))
register_writer(Writer("safetensors", ".safetensors", save_safetensors, SCHEMES))
