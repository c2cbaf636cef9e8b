"""What every writer shares: tied weights stored once, bytes written and hashed in one pass.

``write_views`` writes a file from byte views of memory that already exists (a tensor's
storage, a header) and computes its sha256 from the same memory in a second thread while
the first one writes: no serialized copy of the model is built, and checksumming costs no
extra wall time when the disk is the bottleneck. The safetensors and sharded writers lay
out their files as such views (``safetensors.encode_safetensors``, ``sharded.shard_files``),
so every file they write comes back with its sha256, which checkpoints list in their
manifest.

The *tensor hash* (``provenance.hashing``: the identity of weights, whatever the file layout)
is defined here too, as the byte stream it covers (``tensor_hash_views``), so that a writer
can compute it from the memory it writes (``save_safetensors``, for a recording lineage store).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..errors import MLMFError
from ..files import CHUNK  # write/hash granularity: big enough for throughput, small to overlap
from ..progress import Progress, bar
from .base import alias_key, dtype_name

PROGRESS_MIN_BYTES = 256 * 2**20  # with progress=True, a bar only for files at least this big


def dedupe_shared(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop the names whose tensor is another name's tensor (tied weights).

    Returns:
        (kept: name -> tensor, each stored once; aliases: dropped name -> the kept name).
        Distinct views into one storage (a fused weight split in parts) are all kept.

    Raises:
        MLMFError: a tensor on the meta device (it has no data to write).
    """
    kept: dict[str, torch.Tensor] = {}
    seen: dict[tuple[Any, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        if t.device.type == "meta":
            raise MLMFError(f"tensor {name!r} is on the meta device and has no data")
        key = alias_key(t)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t
    return kept, aliases


def tensor_view(t: torch.Tensor) -> memoryview:
    """The tensor's bytes in row-major order, without a copy when it is contiguous on CPU."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if not t.numel():
        return memoryview(b"")
    flat = t.contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy().data)  # the array keeps the tensor's storage alive


def _chunks(views: list[memoryview]) -> Iterator[memoryview]:
    for v in views:
        flat = v.cast("B")
        for i in range(0, flat.nbytes, CHUNK):
            yield flat[i : i + CHUNK]


def record_line(name: str, kind: str, shape: Iterable[int], nbytes: int) -> bytes:
    """The header that precedes one tensor's bytes in the tensor hash."""
    dims = ",".join(str(int(d)) for d in shape)
    return f"{name}\0{kind}\0{dims}\0{nbytes}\n".encode()


def tensor_hash_views(tensors: dict[str, torch.Tensor]) -> list[memoryview]:
    """What the tensor hash of ``tensors`` (tied names already dropped) covers: in name
    order, each tensor's ``record_line`` (its dtype named as ``dtype_name`` does), then its
    bytes; ``sha256_of`` of these is the hash."""
    views = []
    for name in sorted(tensors):
        t = tensors[name]
        view = tensor_view(t)
        views.append(memoryview(record_line(name, dtype_name(t.dtype), t.shape, view.nbytes)))
        views.append(view)
    return views


def sha256_of(views: list[memoryview]) -> str:
    """The hex sha256 of the views' bytes, in order."""
    h = hashlib.sha256()
    for chunk in _chunks(views):
        h.update(chunk)  # releases the GIL: runs beside the writing thread
    return h.hexdigest()


def write_views(
    views: list[memoryview], path: Path, label: str = "", progress: Progress = False,
    written: Callable[[], object] | None = None,
) -> str:
    """Write the byte views to a new file, fsync it, and return its sha256 (hashed meanwhile).

    Args:
        views: the file's bytes, in order.
        path: a new file (an existing one is an error: callers replace files atomically
            through a temporary name, never in place).
        label: what a progress bar calls the file (default: its name).
        progress: a progress bar for files of at least 256 MiB, or a function told
            ``(bytes written, total)``.
        written: called once every byte is written, before the fsync: it starts work that
            should run while the disk flushes the file rather than slow the writing (the
            tensor hash a recording lineage store needs, ``safetensors.save_safetensors``).

    Raises:
        FileExistsError: ``path`` exists.
    """
    total = sum(v.nbytes for v in views)
    if total <= CHUNK:  # small: a hashing thread would cost more than it saves
        digest = sha256_of(views)
        _write_and_sync(views, path, total, label, progress, written)
        return digest
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(sha256_of, views)
        _write_and_sync(views, path, total, label, progress, written)
        return pending.result()


def _write_and_sync(
    views: list[memoryview], path: Path, total: int, label: str, progress: Progress,
    written: Callable[[], object] | None,
) -> None:
    shown = bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                desc=label or path.name, progress=progress, min_total=PROGRESS_MIN_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
    try:
        for chunk in _chunks(views):
            done = 0
            while done < chunk.nbytes:
                done += os.write(fd, chunk[done:])
            shown.update(chunk.nbytes)
        if written is not None:
            written()
        os.fsync(fd)
    finally:
        os.close(fd)
        shown.close()


def json_bytes(obj: Any, indent: int = 1) -> bytes:
    """``obj`` as standard JSON (no NaN), keys sorted, ending in a newline."""
    return (json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(obj: Any, path: Path) -> str:
    """Write ``obj`` as JSON (``json_bytes``) to a new file, fsync it; returns its sha256."""
    return write_views([memoryview(json_bytes(obj))], path)


__all__ = [
    "PROGRESS_MIN_BYTES", "dedupe_shared", "json_bytes", "record_line", "sha256_of",
    "tensor_hash_views", "tensor_view", "write_json", "write_views",
]


def write_synced(views: list[memoryview], path: Path, label: str = "",
                 progress: Progress = False) -> None:
    """``write_views`` without its sha256, for a caller that hashes the bytes its own way
    meanwhile (a checkpoint's chunk digests, ``checkpoint.chunks``)."""
    _write_and_sync(views, path, sum(v.nbytes for v in views), label, progress, None)
