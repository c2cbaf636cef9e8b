"""Checkpoint files: safetensors written straight from memory, hashed while written.

``write_safetensors`` lays out the safetensors format itself (8-byte header
length, JSON header padded to 8 bytes, tensor bytes in order of falling
alignment) and writes each tensor's bytes from its own memory through a
``memoryview``: no serialized copy of the model is ever built, so a save runs at
the speed of the disk. The sha256 of the file is computed from the same memory
in a second thread while the first one writes, so checksumming costs no extra
wall time when the disk is the bottleneck. The files are readable by the
``safetensors`` package (a test reads them back with it).

``MANIFEST`` lists every file of a checkpoint with its size and sha256;
``verify_manifest`` checks them and names the first file that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import ChecksumError, FormatError, MLMFError
from ..files import sha256_file
from ..formats import load_state_dict
from ..formats.base import TORCH_TO_ST
from ..formats.metadata import encode_metadata
from ..formats.safetensors import dedupe_shared
from ..formats.sharded import INDEX_NAME, nbytes, plan_shards
from ..progress import bar
from ..units import parse_size
from .state import join_state, split_state

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mlmf-checkpoint-manifest"
CHUNK = 32 * 2**20  # write/hash granularity: big enough for throughput, small enough to overlap
PROGRESS_MIN_BYTES = 256 * 2**20  # show a progress bar only for saves at least this big
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _as_bytes(name: str, t: torch.Tensor, path: Path) -> memoryview:
    """The tensor's bytes in row-major order, without a copy when it is contiguous on CPU."""
    if t.dtype not in TORCH_TO_ST:
        raise MLMFError(
            f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store", path
        )
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    flat = t.contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy().data)  # the array keeps the tensor's storage alive


def safetensors_layout(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any] | None = None
) -> tuple[bytes, list[memoryview]]:
    """The file's prefix (length + header) and the tensor byte views, in file order."""
    kept, aliases = dedupe_shared(tensors)
    # Falling element size keeps every tensor aligned to its dtype, as safetensors does.
    order = sorted(kept, key=lambda n: (-kept[n].element_size(), n))
    entries: dict[str, Any] = {}
    views: list[memoryview] = []
    offset = 0
    for name in order:
        t = kept[name]
        view = _as_bytes(name, t, path) if t.numel() else memoryview(b"")
        entries[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + view.nbytes]}
        offset += view.nbytes
        if view.nbytes:
            views.append(view)
    # The header lists tensors in the caller's order (readers that keep JSON order, like
    # ml.open_weights, give back the model's order); the data section is in alignment order.
    header: dict[str, Any] = {"__metadata__": encode_metadata(metadata, aliases)}
    header.update((name, entries[name]) for name in kept)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, views


def _chunks(views: list[memoryview]) -> Iterator[memoryview]:
    for v in views:
        flat = v.cast("B")
        for i in range(0, flat.nbytes, CHUNK):
            yield flat[i : i + CHUNK]


def _sha256(views: list[memoryview]) -> str:
    h = hashlib.sha256()
    for chunk in _chunks(views):
        h.update(chunk)  # releases the GIL: runs beside the writing thread
    return h.hexdigest()


def write_views(views: list[memoryview], path: Path, label: str = "") -> str:
    """Write the byte views to a new file, fsync it, and return its sha256 (hashed meanwhile)."""
    total = sum(v.nbytes for v in views)
    if total <= CHUNK:  # small: a hashing thread would cost more than it saves
        digest = _sha256(views)
        _write_and_sync(views, path, total, label)
        return digest
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_sha256, views)
        _write_and_sync(views, path, total, label)
        return pending.result()


def _write_and_sync(views: list[memoryview], path: Path, total: int, label: str) -> None:
    shown = bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                desc=label or path.name, hide=total < PROGRESS_MIN_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in _chunks(views):
            done = 0
            while done < chunk.nbytes:
                done += os.write(fd, chunk[done:])
            shown.update(chunk.nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)
        shown.close()


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any] | None = None
) -> str:
    """Write one safetensors file from the tensors' memory; returns its sha256.

    Args:
        tensors: name -> tensor; tensors sharing storage are written once (listed as tied).
        path: a new file (an existing one is an error: checkpoints never overwrite in place).
        metadata: JSON-able values for the header's ``__metadata__``.

    Returns:
        The hex sha256 of the file's bytes.

    Raises:
        MLMFError: a dtype safetensors cannot store, or a tensor on the meta device.
    """
    prefix, views = safetensors_layout(tensors, path, metadata)
    return write_views([memoryview(prefix), *views], path)


def write_json(obj: Any, path: Path) -> str:
    """Write ``obj`` as JSON (standard: no NaN) to a new file, fsync it; returns its sha256."""
    data = (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    return write_views([memoryview(data)], path)


def write_weights(
    tensors: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str,
    metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write model weights in the Hugging Face layout; returns file name -> sha256.

    One ``model.safetensors`` when they fit in ``max_shard_size``, else numbered
    shards and ``model.safetensors.index.json``, as ``transformers`` writes them.
    """
    kept, aliases = dedupe_shared(tensors)
    sizes = nbytes(kept)
    groups = plan_shards(sizes, parse_size(max_shard_size, "max_shard_size"))
    n = len(groups)
    sums: dict[str, str] = {}
    weight_map: dict[str, str] = {}
    for k, names in enumerate(groups, 1):
        shard = "model.safetensors" if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
        part = {name: kept[name] for name in names}
        part.update({a: kept[t] for a, t in aliases.items() if t in part})
        sums[shard] = write_safetensors(part, folder / shard, metadata)
        weight_map.update(dict.fromkeys(names, shard))
    if n > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        sums[INDEX_NAME] = write_json(index, folder / INDEX_NAME)
    return sums


def write_manifest(folder: Path, sums: dict[str, str]) -> None:
    """List every file with its size and sha256 in ``folder/manifest.json`` (written last)."""
    files = {name: {"sha256": sums[name], "size": (folder / name).stat().st_size}
             for name in sorted(sums)}
    write_json({"format": MANIFEST_FORMAT, "version": 1, "files": files}, folder / MANIFEST)


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``file -> {sha256, size}``, validated.

    Raises:
        FormatError: a missing or malformed manifest, naming it.
    """
    path = folder / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError("no manifest: not a checkpoint folder, or not finished", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"manifest is not valid JSON ({e})", path) from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise FormatError(f"expected a {MANIFEST_FORMAT!r} document", path)
    files = doc.get("files")
    if not isinstance(files, dict):
        raise FormatError("manifest has no 'files' object", path)
    for name, entry in files.items():
        if not _PLAIN_NAME.match(name) or name == MANIFEST:
            raise FormatError(f"manifest lists {name!r}, which is not a plain file name", path)
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or type(entry.get("size")) is not int):
            raise FormatError(f"manifest entry for {name!r} lacks sha256 or size", path)
    return files


def verify_manifest(folder: Path, workers: int = 2) -> dict[str, dict[str, Any]]:
    """Check every file against the manifest (sizes first, then sha256 in parallel).

    Returns:
        The manifest's file entries.

    Raises:
        ChecksumError: naming the first file that is missing, has the wrong size or hash.
        FormatError: the manifest itself is missing or malformed.
    """
    files = read_manifest(folder)
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise ChecksumError("listed in the manifest but missing", path)
        size = path.stat().st_size
        if size != entry["size"]:
            raise ChecksumError(f"size {size} bytes, the manifest says {entry['size']}", path)
    names = list(files)
    if sum(e["size"] for e in files.values()) <= CHUNK or workers <= 1:
        found = [sha256_file(folder / n) for n in names]
    else:  # hashlib releases the GIL: big files hash in parallel
        with ThreadPoolExecutor(min(workers, len(names))) as pool:
            found = list(pool.map(lambda n: sha256_file(folder / n), names))
    for name, digest in zip(names, found, strict=True):
        if digest != files[name]["sha256"]:
            raise ChecksumError(
                f"sha256 {digest[:16]}… does not match the manifest's "
                f"{files[name]['sha256'][:16]}…; the file was changed or corrupted",
                folder / name,
            )
    return files


def write_part(folder: Path, part: str, state: Any, sums: dict[str, str]) -> None:
    """Store a nested state as ``part.json`` (+ ``part.safetensors``); records the sha256s."""
    skeleton, tensors = split_state(state)
    if tensors:
        sums[f"{part}.safetensors"] = write_safetensors(tensors, folder / f"{part}.safetensors")
    sums[f"{part}.json"] = write_json(skeleton, folder / f"{part}.json")


def read_part(folder: Path, files: Iterable[str], part: str) -> Any:
    """Rebuild a part (``"optimizer"``, ``"scheduler"``) that ``write_part`` stored.

    Raises:
        MLMFError: the checkpoint holds no such part. FormatError: malformed JSON.
    """
    if f"{part}.json" not in files:
        raise MLMFError(f"this checkpoint holds no {part} state; it was saved without "
                        f"{part}=", folder)
    path = folder / f"{part}.json"
    try:
        skeleton = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"not valid JSON ({e})", path) from None
    st = folder / f"{part}.safetensors"
    return join_state(skeleton, load_state_dict(st) if st.exists() else {}, path)


def weights_file(folder: Path) -> Path:
    """The weights of a checkpoint folder: the sharded index, or ``model.safetensors``."""
    index = folder / INDEX_NAME
    return index if index.exists() else folder / "model.safetensors"


def remove_dir(path: Path) -> None:
    """Rename away first (atomic), so no half-deleted checkpoint is ever listed, then delete."""
    gone = atomic.tmp_name(path, "del")
    os.rename(path, gone)
    atomic.fsync_path(path.parent)
    shutil.rmtree(gone)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (so its temporary folders may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
