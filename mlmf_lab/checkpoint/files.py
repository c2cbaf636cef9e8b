"""Checkpoint files: weights and state through the formats' hashing writers, and manifests.

Weights are written in the Hugging Face layout (``formats.sharded.shard_files``) and
optimizer/scheduler/RNG tensors as safetensors (``formats.safetensors.encode_safetensors``):
straight from the tensors' memory, each file's sha256 computed while it is written, and the
sha256 of each 64 MiB chunk of a bigger file too (``chunks.py``). ``MANIFEST`` lists every
file of a checkpoint with its size, sha256 and chunk digests; ``verify_manifest`` checks
them (in parallel, ``verify.py``) and names the first file that differs.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import ChecksumError, FormatError, MLMFError, UnsafeFileError
from ..files import file_kind, read_json
from ..formats import load_state_dict
from ..formats.sharded import INDEX_NAME
from ..formats.write import write_json
from .chunks import FileDigest, check_chunks, manifest_entry, write_json_file, write_tensors
from .state import join_state, split_state
from .verify import check_files

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mlmf-checkpoint-manifest"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def write_manifest(folder: Path, sums: Mapping[str, FileDigest]) -> None:
    """List every file with its size and its sha256 or chunk digests in
    ``folder/manifest.json`` (written last).

    Version 2 when a file is listed by its chunks (version 1 readers need a sha256 per
    file and refuse it by name), else 1.
    """
    files = {name: manifest_entry(sums[name], (folder / name).stat().st_size)
             for name in sorted(sums)}
    version = 2 if any("chunks" in e for e in files.values()) else 1
    write_json({"format": MANIFEST_FORMAT, "version": version, "files": files},
               folder / MANIFEST)


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``file -> {size, sha256 | chunks}``, validated.

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
        if (not isinstance(entry, dict) or type(entry.get("size")) is not int
                or entry["size"] < 0 or not isinstance(entry.get("sha256", ""), str)
                or ("sha256" not in entry and "chunks" not in entry)):
            raise FormatError(f"manifest entry for {name!r} lacks a size, or a sha256 or "
                              "chunk list", path)
        check_chunks(name, entry, path)
    return files


def verify_manifest(folder: Path,
                    names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Check every file against the manifest (sizes first, then the sha256s in parallel:
    the chunks of a big file, the small files whole).

    Args:
        names: hash only these files (all when None; none with ``()``: sizes only). The
            weights of a verified load are hashed as they are read (``fill.fill_weights``).

    Returns:
        The manifest's file entries.

    Raises:
        ChecksumError: naming the first file that is missing, has the wrong size or hash
            (and the byte range of the chunk that differs).
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
    check_files([(folder / n, files[n], ()) for n in names])
    return files


def write_part(folder: Path, part: str, state: Any, sums: dict[str, FileDigest]) -> None:
    """Store a nested state as ``part.json`` (+ ``part.safetensors``); records the digests."""
    skeleton, tensors = split_state(state)
    if tensors:
        sums[f"{part}.safetensors"] = write_tensors(tensors, folder / f"{part}.safetensors")
    sums[f"{part}.json"] = write_json_file(skeleton, folder / f"{part}.json")


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
