"""Content hashes: the identity of weights, independent of file layout.

The *tensor hash* is a sha256 over every tensor in sorted-name order. Each tensor
contributes a record line ``name \\0 type \\0 d0,d1,... \\0 nbytes \\n`` (``type`` is the
quant type where there is one, else the dtype, e.g. ``float32``) followed by its raw
bytes (``formats.write.record_line`` and ``tensor_hash_views``, where writers find them: the
safetensors writer computes this hash from the memory it writes when a lineage store
records the save).
Files are hashed straight from a memory map in chunks, so a 10 GB file costs 10 GB of reads
but no extra memory. Because only names, types, shapes and bytes
count, a state dict in memory and the safetensors file it was saved to have the
same hash, and so do a single file and the same tensors in an HF sharded folder.

Files that are not weight files (a config, a folder of mixed files) get a *bytes
hash*: sha256 over the relative file names and their bytes.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import MLMFError
from ..files import hash_file_into, read_json, walk_files
from ..formats.write import (
    dedupe_shared,
    record_line,
    sha256_of,
    tensor_hash_views,
    tensor_view,
)
from ..tables import fields_dict, fields_row

CHUNK = 8 * 1024 * 1024
# Formats whose WeightFile.spans locate the stored bytes of each tensor in its files.
RAW_FORMATS = frozenset({"safetensors", "gguf"})


class ContentHash(NamedTuple):
    """A sha256 digest and what it covers: ``"tensors"`` or ``"bytes"``."""

    sha256: str
    kind: str

    def short(self) -> str:
        return self.sha256[:12]

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


def _update_from_file(h: hashlib._Hash, mm: mmap.mmap, offset: int, nbytes: int) -> None:
    view = memoryview(mm)
    try:
        for start in range(offset, offset + nbytes, CHUNK):
            h.update(view[start : min(start + CHUNK, offset + nbytes)])
    finally:
        view.release()


def file_tensor_hash(path: str | os.PathLike[str]) -> ContentHash:
    """Tensor hash of any file ``ml.open_weights`` reads, streamed from its memory map.

    Raises:
        MLMFError: when the file cannot be opened as weights.
    """
    from ..formats import open_weights

    h = hashlib.sha256()
    maps: dict[str, tuple[mmap.mmap, int]] = {}
    with open_weights(path) as wf:
        try:
            for name in sorted(wf):
                info = wf.info(name)
                h.update(record_line(name, info.quant or info.dtype, info.shape, info.nbytes))
                if wf.format in RAW_FORMATS:
                    for file, offset, nbytes in wf.spans(name):
                        if file not in maps:
                            maps[file] = _map(file)
                        mm, size = maps[file]
                        if offset + nbytes > size:
                            raise MLMFError(
                                f"tensor {name!r} ends at byte {offset + nbytes}, "
                                f"past the end of the file ({size} bytes)", file)
                        _update_from_file(h, mm, offset, nbytes)
                else:
                    h.update(tensor_view(wf.tensor(name)))
        finally:
            for mm, _ in maps.values():
                mm.close()
    return ContentHash(h.hexdigest(), "tensors")


def _map(file: str) -> tuple[mmap.mmap, int]:
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise MLMFError("the file is empty", file)
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


def unique_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop names that alias an earlier tensor (tied weights) by the writers' own rule
    (``formats.write.dedupe_shared``); tensors on the meta device are kept as they are."""
    _, aliases = dedupe_shared({n: t for n, t in tensors.items() if not t.is_meta})
    return {n: t for n, t in tensors.items() if n not in aliases}


def state_hash(tensors: Mapping[str, torch.Tensor]) -> ContentHash:
    """Tensor hash of an in-memory state dict (equal to the file it would be saved to).

    Raises:
        MLMFError: a tensor is on the meta device (it has no bytes to hash).
    """
    kept = unique_tensors(tensors)
    for name in sorted(kept):
        if kept[name].device.type == "meta":
            raise MLMFError(f"tensor {name!r} is on the meta device and has no data to hash")
    return ContentHash(sha256_of(tensor_hash_views(kept)), "tensors")


def bytes_hash(path: str | os.PathLike[str]) -> ContentHash:
    """sha256 over a file's bytes, or over a folder's relative names and bytes."""
    p = Path(path)
    h = hashlib.sha256()
    for f in walk_files(p):
        if p.is_dir():
            h.update(f"{f.relative_to(p).as_posix()}\0{f.stat().st_size}\n".encode())
        hash_file_into(h, f)
    return ContentHash(h.hexdigest(), "bytes")


def content_hash(path: str | os.PathLike[str]) -> ContentHash:
    """The tensor hash of a weight file, or the bytes hash of anything else.

    Raises:
        MLMFError: the path does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise MLMFError("no such file or folder to hash", p)
    if p.is_dir() and _holds_more_than_its_model(p):
        return bytes_hash(p)  # its model alone would not tell it apart
    try:
        return file_tensor_hash(p)
    except MLMFError:
        return bytes_hash(p)


WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def _holds_more_than_its_model(folder: Path) -> bool:
    """True when a folder holds weight files besides the model it opens as (an adapter, ...)."""
    from ..formats.registry import resolve

    try:
        opened = resolve(folder)
    except MLMFError:
        return False
    used = {opened.name}
    if opened.name.endswith(".index.json"):
        try:
            used |= set(map(str, read_json(opened, "the index", expect=dict)["weight_map"]
                            .values()))
        except (MLMFError, KeyError, AttributeError):
            return False  # a broken index: opening it reports that
    return any(f.name not in used for f in folder.iterdir() if f.suffix in WEIGHT_SUFFIXES)
