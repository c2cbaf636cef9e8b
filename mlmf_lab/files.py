"""Files as the lab sees them: their bytes' sha256 and a stamp that changes when they may have.

>>> sha256_file("model.safetensors")        # doctest: +SKIP
'9f86d0...'
>>> file_stamp("model_dir/")                # doctest: +SKIP
(('config.json', 512, 1733236800000000000, 1234), ('model.safetensors', ...))
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from .errors import MLMFError

CHUNK = 32 * 2**20  # hashing granularity: big enough for throughput, small enough for memory
# (relative name, size, mtime_ns, inode) per file; a file's own name is "".
Stamp = tuple[tuple[str, int, int, int], ...]


def walk_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself if it is a file, else every regular file below it, sorted."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted(q for q in p.rglob("*") if q.is_file())


def hash_file_into(h: Any, path: str | os.PathLike[str]) -> None:
    """Feed a file's bytes to the hash ``h``, read in chunks into one reused buffer."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(max(1, min(CHUNK, size)))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    hash_file_into(h, path)
    return h.hexdigest()


def file_stamp(path: str | os.PathLike[str], st: os.stat_result | None = None) -> Stamp:
    """(name, size, mtime_ns, inode) of a file, or of every file below a folder.

    Two equal stamps mean the content has not changed through any ordinary write (a rewrite
    in place moves the mtime; a replacement by rename changes the inode).

    Args:
        path: the file or folder.
        st: its ``os.stat`` result when the caller has it already.

    Raises:
        MLMFError: when nothing can be read at ``path``.
    """
    if st is None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise MLMFError(f"cannot read the file ({e.strerror})", path) from None
    if not stat.S_ISDIR(st.st_mode):
        return (("", st.st_size, st.st_mtime_ns, st.st_ino),)
    root = Path(path)
    parts = []
    for f in walk_files(root):
        s = f.stat()
        parts.append((f.relative_to(root).as_posix(), s.st_size, s.st_mtime_ns, s.st_ino))
    return tuple(parts)
