"""The disk cache's blobs: stored by their sha256, linked into snapshots, checked when served.

A blob is named by the hash of its bytes, so whether a file still holds those bytes is a
question with an exact answer. Asking it on every ``DiskCache.get`` means reading every
byte of the artifact, so by default (``check="stamp"``) it is asked when the file's stamp
(size, mtime, ctime, inode) differs from the one recorded the last time its bytes were
confirmed (when it was stored, or re-hashed since): any write through the file system
moves the ctime, which nothing can set back. So does linking a blob into another snapshot
(its link count changes): the entries sharing it are re-hashed once, then confirmed again.
``files.file_stamp`` says what a stamp cannot see (bytes changed under the file system);
``check="content"`` re-hashes on every get.
A file whose bytes no longer match is never served: its entry and the blob are removed,
and the artifact is rebuilt like any miss.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from .. import atomic
from ..files import file_stamp, sha256_file

CHECKS = ("stamp", "content")
_CHUNK = 1 << 20
FileStamp = list[int]  # [size, mtime_ns, ctime_ns, inode]


def store_blob(root: Path, src: Path, move: bool) -> str:
    """Copy (or move) one file into ``root/blobs``, hashing it; returns its sha256."""
    tmp = root / "tmp" / f"blob-{uuid.uuid4().hex}"
    if move:
        os.replace(src, tmp)
        digest = sha256_file(tmp)
    else:
        h = hashlib.sha256()
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
        digest = h.hexdigest()
    blob = root / "blobs" / digest
    if blob.exists():
        tmp.unlink()
    else:
        atomic.fsync_path(tmp)
        os.chmod(tmp, 0o444)  # a blob is shared by every artifact that holds these bytes
        os.replace(tmp, blob)
    return digest


def link(blob: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``blob``, else as a read-only copy."""
    try:
        os.link(blob, dest)
    except OSError:  # a file system without hard links: a (read-only) copy instead
        shutil.copyfile(blob, dest)
        os.chmod(dest, 0o444)


def stamp(path: Path) -> FileStamp:
    """``files.file_stamp`` of one file, as the JSON list a ref stores."""
    _name, *fields = file_stamp(path)[0]
    return [int(f) for f in fields]


def stamps(snapshot: Path, files: Mapping[str, str]) -> dict[str, list[str | int]]:
    """name -> [sha256, *stamp] of a snapshot's files, as confirmed right now."""
    return {name: [digest, *stamp(snapshot / name)] for name, digest in files.items()}


def check_files(snapshot: Path, files: Mapping[str, str],
                confirmed: Mapping[str, list[str | int]], check: str
                ) -> tuple[dict[str, str], bool]:
    """Which of a snapshot's files no longer hold their bytes.

    Args:
        snapshot: the folder the files are served from.
        files: name -> the sha256 its bytes must have.
        confirmed: name -> [sha256, *stamp] as last confirmed (``stamps``).
        check: ``"stamp"``: re-hash only files whose stamp moved; ``"content"``: all.

    Returns:
        (name -> sha256 found, for each file that does not match; whether any file was
        re-hashed and matched, so its confirmed stamp should be recorded again).
    """
    bad: dict[str, str] = {}
    rehashed = False
    for name, digest in files.items():
        path = snapshot / name
        try:
            if check == "stamp" and confirmed.get(name) == [digest, *stamp(path)]:
                continue
            found = sha256_file(path)
        except OSError as e:
            found = f"an unreadable file ({e.strerror})"
        if found != digest:
            bad[name] = found
        else:
            rehashed = True
    return bad, rehashed


__all__ = ["CHECKS", "check_files", "link", "stamp", "stamps", "store_blob"]
