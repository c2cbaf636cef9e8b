"""Keys of the model cache: a file is known by its path plus what ``stat`` says about it.

Size, mtime (nanoseconds) and inode together change whenever a file is rewritten in place
or replaced atomically (a new inode), so a cached value is never served for a changed file.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from .errors import CacheError, ConfigError, MLMFError

Stamp = tuple[tuple[str, int, int, int], ...]  # (name, size, mtime_ns, inode) per file
NOT_A_FILE: Stamp = ()
Ident = tuple[str, Any]  # ("file", absolute path) or ("key", the caller's hashable key)


def parse_bytes(value: int | str, what: str) -> int:
    """``"2GiB"`` / ``"500MB"`` / ``1024`` -> bytes; errors name the argument ``what``."""
    from .formats.sharded import parse_size

    try:
        return parse_size(value)
    except MLMFError:
        raise ConfigError(f"{what} must be a positive byte count or like '500MB' / '2GiB', "
                          f"found {value!r}") from None


def file_stamp(path: str) -> Stamp:
    """(name, size, mtime_ns, inode) of a file, or of every file in a folder (sharded layout).

    Raises:
        CacheError: when nothing exists at ``path``.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise CacheError(f"cannot read the file to cache ({e.strerror})", path) from None
    if not stat.S_ISDIR(st.st_mode):
        return (("", st.st_size, st.st_mtime_ns, st.st_ino),)
    with os.scandir(path) as it:
        files = [(e.name, e.stat()) for e in it if e.is_file()]
    return tuple(sorted((n, s.st_size, s.st_mtime_ns, s.st_ino) for n, s in files))


__all__ = ["NOT_A_FILE", "Ident", "Stamp", "file_stamp", "parse_bytes"]
