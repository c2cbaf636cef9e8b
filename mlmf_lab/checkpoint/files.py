"""Checkpoint files: weights and state through the formats' hashing writers, and manifests.

Weights are written in the Hugging Face layout by ``formats.sharded.write_sharded`` and
optimizer/scheduler/RNG tensors by ``formats.safetensors.write_safetensors``: straight from
the tensors' memory, each file's sha256 computed while it is written. ``MANIFEST`` lists
every file of a checkpoint with its size and sha256; ``verify_manifest`` checks them and
names the first file that differs.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import ChecksumError, FormatError, MLMFError, UnsafeFileError
from ..files import CHUNK, file_kind, read_json, sha256_file
from ..formats import load_state_dict
from ..formats.safetensors import write_safetensors
from ..formats.sharded import INDEX_NAME
from ..formats.write import write_json
from .state import join_state, split_state

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mlmf-checkpoint-manifest"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    path = member(folder, MANIFEST)
    if not os.path.lexists(path):
        raise FormatError("no manifest: not a checkpoint folder, or not finished", path)
    doc = read_json(path, "the manifest")
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


def verify_manifest(folder: Path, workers: int = 2,
                    names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Check every file against the manifest (sizes first, then sha256 in parallel).

    Args:
        names: hash only these files (all when None; none with ``()``: sizes only). The
            weights of a verified load are hashed as they are read (``fill.read_verified``).

    Returns:
        The manifest's file entries.

    Raises:
        ChecksumError: naming the first file that is missing, has the wrong size or hash.
        FormatError: the manifest itself is missing or malformed.
    """
    files = read_manifest(folder)
    for name, entry in files.items():
        path = member(folder, name)
        if not path.is_file():
            raise ChecksumError("listed in the manifest but missing", path)
        size = path.stat().st_size
        if size != entry["size"]:
            raise ChecksumError(f"size {size} bytes, the manifest says {entry['size']}", path)
    names = list(files) if names is None else [n for n in names if n in files]
    if sum(files[n]["size"] for n in names) <= CHUNK or workers <= 1 or len(names) < 2:
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
        sums[f"{part}.safetensors"] = write_safetensors(tensors, folder / f"{part}.safetensors",
                                                        progress=True)
    sums[f"{part}.json"] = write_json(skeleton, folder / f"{part}.json")


def read_part(folder: Path, files: Iterable[str], part: str) -> Any:
    """Rebuild a part (``"optimizer"``, ``"scheduler"``) that ``write_part`` stored.

    Raises:
        MLMFError: the checkpoint holds no such part. FormatError: malformed JSON.
    """
    if f"{part}.json" not in files:
        raise MLMFError(f"this checkpoint holds no {part} state; it was saved without "
                        f"{part}=", folder)
    path = member(folder, f"{part}.json")
    skeleton = read_json(path, f"the {part} state")
    st = member(folder, f"{part}.safetensors")
    return join_state(skeleton, load_state_dict(st) if os.path.lexists(st) else {}, path)


def restore_part(folder: Path, files: Iterable[str], part: str, target: Any) -> None:
    """``target.load_state_dict`` with the part (``"optimizer"``, ``"scheduler"``) stored.

    torch checks little before it uses a state: a damaged ``optimizer.json`` fails deep inside
    with ``KeyError``, ``TypeError`` or ``AttributeError`` (a scheduler's ``-1`` has no
    ``items``), so those become a ``FormatError`` that says which file and which part.
    """
    state = read_part(folder, files, part)
    path = folder / f"{part}.json"
    if not isinstance(state, dict):
        raise FormatError(f"the {part} state must be a JSON object, found "
                          f"{type(state).__name__}", path)
    try:
        target.load_state_dict(state)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, RuntimeError) as e:
        raise FormatError(f"the {part} state does not fit the {type(target).__name__} given "
                          f"({type(e).__name__}: {str(e)[:200]}); was it saved from another "
                          f"{part}, or is the file damaged?", path) from None


def member(folder: Path, name: str) -> Path:
    """``folder/name``, checked before anything reads it: a link that leads out of the
    checkpoint folder and anything but a regular file (a folder, a FIFO that would block
    the reader) are refused. A missing file passes: the caller says what it lacks.

    Raises:
        UnsafeFileError: a link leaving the folder. FormatError: not a regular file.
    """
    path = folder / name
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except FileNotFoundError:
        return path
    except (OSError, RuntimeError) as e:  # a loop of links, no permission
        raise FormatError(f"cannot read the file ({getattr(e, 'strerror', None) or e})",
                          path) from None
    if not real.is_relative_to(folder.resolve()):
        raise UnsafeFileError(f"a link that leaves the checkpoint folder (to {real}); a "
                              "checkpoint's files must be inside it", path)
    if not stat.S_ISREG(mode):
        raise FormatError(f"expected a regular file, found {file_kind(mode)}", path)
    return path


def weights_file(folder: Path) -> Path:
    """The weights of a checkpoint folder: the sharded index, or ``model.safetensors``."""
    index = member(folder, INDEX_NAME)
    return index if os.path.lexists(index) else member(folder, "model.safetensors")


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
