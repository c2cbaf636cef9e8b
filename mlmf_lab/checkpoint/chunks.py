"""Chunk digests: the sha256 of each ``CHUNK_SIZE`` bytes of a checkpoint file, so that
several threads can verify one file at once.

One sha256 stream cannot be split, and it runs at about 1.1 GiB/s here: longer than
torch's whole warm load of the same bytes (issue 21). So a file larger than ``CHUNK_SIZE``
is listed in the manifest by the sha256 of each ``CHUNK_SIZE`` bytes (every byte, header
included, the last chunk shorter) instead of one sha256 of the whole file: computing both
would hash every byte twice while saving. They are computed while the file is written, in
a thread beside the writer, from the same memory (no second read); ``verify.check_files``
then hands the chunks to one thread per CPU. A file of one chunk or less keeps its single
sha256 (``sha256sum`` checks it); a chunk is checked by hand with
``dd if=FILE bs=64M skip=K count=1 | sha256sum``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import FormatError
from ..formats.safetensors import encode_safetensors
from ..formats.sharded import shard_files
from ..formats.write import write_json, write_synced, write_views
from ..progress import Progress

CHUNK_SIZE = 64 << 20  # 16 chunks per GiB: enough to keep 2-8 threads busy to the end
MIN_CHUNK_SIZE = 1 << 20  # what a manifest may declare: bounds the work per chunk listed


class FileDigest(NamedTuple):
    """What the manifest records of a file besides its size."""

    sha256: str | None  # of the whole file; None for a file listed by its chunks
    chunk_size: int = 0  # bytes per chunk (the last one shorter); 0: no chunk list
    chunks: tuple[str, ...] = ()  # sha256 of each chunk, in file order


def chunk_digests(views: Iterable[memoryview], chunk_size: int) -> list[str]:
    """The hex sha256 of each ``chunk_size`` bytes of the views' bytes, in order.

    >>> import hashlib
    >>> chunk_digests([memoryview(b"abc"), memoryview(b"de")], 2) == [
    ...     hashlib.sha256(p).hexdigest() for p in (b"ab", b"cd", b"e")]
    True
    """
    out: list[str] = []
    h, filled = hashlib.sha256(), 0
    for v in views:
        flat = v.cast("B") if v.format != "B" or v.ndim != 1 else v
        i = 0
        while i < flat.nbytes:
            n = min(flat.nbytes - i, chunk_size - filled)
            h.update(flat[i : i + n])  # releases the GIL: runs beside the writer
            filled += n
            i += n
            if filled == chunk_size:
                out.append(h.hexdigest())
                h, filled = hashlib.sha256(), 0
    if filled:
        out.append(h.hexdigest())
    return out


def write_file(views: list[memoryview], path: Path, progress: Progress = False) -> FileDigest:
    """Write and fsync the file: a file of one chunk or less with its sha256
    (``write_views``), a larger one with its chunk digests, hashed meanwhile from the same
    memory."""
    chunk_size = CHUNK_SIZE  # read here: a test may shrink it
    if sum(v.nbytes for v in views) <= chunk_size:
        return FileDigest(write_views(views, path, progress=progress))
    with ThreadPoolExecutor(1) as pool:
        chunks = pool.submit(chunk_digests, views, chunk_size)
        write_synced(views, path, progress=progress)
        return FileDigest(None, chunk_size, tuple(chunks.result()))


def write_weights(state: dict[str, torch.Tensor], folder: Path, metadata: dict[str, Any],
                  max_shard_size: int | str) -> dict[str, FileDigest]:
    """The Hugging Face layout of ``formats.sharded.write_sharded``, each file with its
    chunk digests."""
    return {name: write_file(views, folder / name, progress=True)
            for name, views in shard_files(state, folder, metadata, max_shard_size)}


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> FileDigest:
    """One safetensors file (``formats.safetensors.write_safetensors``) with its chunk
    digests."""
    return write_file(encode_safetensors(tensors, path), path, progress=True)


def write_json_file(obj: Any, path: Path) -> FileDigest:
    """``formats.write.write_json``: a small file, its sha256 is its chunk's."""
    return FileDigest(write_json(obj, path))


def manifest_entry(digest: FileDigest, size: int) -> dict[str, Any]:
    """A file's entry in ``manifest.json``."""
    entry: dict[str, Any] = {"size": size}
    if digest.sha256 is not None:
        entry["sha256"] = digest.sha256
    if digest.chunks:
        entry["chunks"] = {"size": digest.chunk_size, "sha256": list(digest.chunks)}
    return entry


def check_chunks(name: str, entry: dict[str, Any], manifest: Path) -> None:
    """Refuse a chunk list that does not cover the file exactly once.

    Raises:
        FormatError: naming the manifest and the file its entry is for.
    """
    chunks = entry.get("chunks")
    if chunks is None:
        return
    size = chunks.get("size") if isinstance(chunks, dict) else None
    if type(size) is not int or size < MIN_CHUNK_SIZE:
        raise FormatError(f"the chunk list of {name!r} needs a chunk 'size' of at least "
                          f"{MIN_CHUNK_SIZE} bytes, found {str(size)[:40]}", manifest)
    digests = chunks.get("sha256")
    want = math.ceil(entry["size"] / size)
    if not isinstance(digests, list) or len(digests) != want:
        found = f"{len(digests)}" if isinstance(digests, list) else type(digests).__name__
        raise FormatError(f"the chunk list of {name!r} must hold {want} sha256 digests (one "
                          f"per {size} bytes of {entry['size']}), found {found}", manifest)
    if not all(isinstance(d, str) and len(d) == 64 for d in digests):
        raise FormatError(f"the chunk list of {name!r} holds something that is not a hex "
                          "sha256", manifest)
