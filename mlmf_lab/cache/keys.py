"""Keys of the caches, and the byte counts and ages their settings are written in.

A file is known by its path plus what ``stat`` says about it (``files.file_stamp``):
size, mtime, ctime and inode together change whenever a file is rewritten in place,
replaced atomically (a new inode) or edited with its mtime put back (the ctime moves), so a
cached value is not served for a file changed through the file system. ``file_stamp``
states what a stamp cannot see; ``derive_key(..., content=True)`` keys by the bytes
instead, and such a key serves ``ModelCache`` as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Container, Mapping, Sequence
from typing import Any, TypeVar

from ..errors import CacheError, ConfigError, MLMFError
from ..files import Stamp, file_stamp, sha256_file, walk_files

NOT_A_FILE: Stamp = ()
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
Ident = tuple[str, Any]  # ("file", absolute path) or ("key", the caller's hashable key)
V = TypeVar("V")


def identify(key: Any, must_be_file: bool, plain_keys: Container[Ident],
             abspaths: dict[str, str]) -> tuple[Ident, Stamp, str]:
    """(identity, stamp, label) of a cache key; a path's identity is its absolute path.

    A ``str`` names a file when something exists there (one ``stat`` decides, and is the
    stamp); otherwise it is a plain key, unless ``must_be_file``. A string already in
    ``plain_keys`` stays a plain key and costs no ``stat``. ``abspaths`` remembers the
    absolute form of absolute names (the same whatever the working directory).

    Raises:
        CacheError: a file that must exist does not, or an unhashable key.
    """
    is_str = type(key) is str
    if is_str and not must_be_file and ("key", key) in plain_keys:
        return ("key", key), NOT_A_FILE, repr(key)[:200]
    if is_str or isinstance(key, str | os.PathLike):
        name = key if is_str else os.fsdecode(key)
        path = abspaths.get(name)
        if path is None:
            path = os.path.abspath(name)
            if os.path.isabs(name) and len(abspaths) < 4096:
                abspaths[name] = path
        try:
            st = os.stat(path)
        except OSError as e:
            if must_be_file or not isinstance(key, str):
                raise CacheError(f"cannot read the file to cache ({e.strerror})", path) from None
        else:
            return ("file", path), file_stamp(path, st), path
    try:
        hash(key)
    except TypeError:
        raise CacheError(f"cache keys must be hashable, found {type(key).__name__}") from None
    return ("key", key), NOT_A_FILE, repr(key)[:200]


def candidates(path_or_key: Any) -> list[Ident]:
    """The identities a cached entry for ``path_or_key`` may have, without touching the disk."""
    found: list[Ident] = []
    if isinstance(path_or_key, str | os.PathLike):
        found.append(("file", os.path.abspath(os.fsdecode(path_or_key))))
    if not isinstance(path_or_key, os.PathLike):
        found.append(("key", path_or_key))
    return found


def find_entry(entries: Mapping[Ident, V], path_or_key: Any) -> tuple[Ident, V]:
    """The entry under a path (by its absolute path), a key, or its label as ``rows()``
    lists it (what a view sends back).

    Raises:
        CacheError: nothing cached under that name, listing what is.
    """
    for ident in candidates(path_or_key):
        try:
            return ident, entries[ident]
        except (KeyError, TypeError):
            continue
    for ident, entry in entries.items():
        if getattr(entry, "label", None) == path_or_key:
            return ident, entry
    cached = ", ".join(getattr(e, "label", "?") for e in entries.values()) or "nothing"
    raise CacheError(f"{path_or_key!r} is not in the cache; cached: {cached}")


def parse_age(value: float | str) -> float:
    """``"7d"`` / ``"12h"`` / ``"30m"`` / ``"45s"`` / ``"2w"`` / seconds -> seconds.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value).lower())
    if not m:
        raise ConfigError(f"an age must be like 7d, 12h, 30m, 45s or a number of seconds, "
                          f"found {value!r}")
    return float(m.group(1)) * _AGE_UNITS[m.group(2) or "s"]


def derive_key(operation: str, inputs: Sequence[Any],
               params: Mapping[str, Any] | None = None, *, content: bool = False) -> str:
    """A key naming "``operation`` applied to ``inputs`` with ``params``".

    Args:
        operation: what was done, e.g. ``"dequantize"`` (the key's readable prefix).
        inputs: files and folders (fingerprinted), or other values (by ``repr``).
        params: the operation's parameters (by their JSON, or ``repr``).
        content: fingerprint files by the sha256 of their bytes (a full read of every
            input) instead of by absolute path and ``file_stamp``, which costs one
            ``stat`` and misses what a stamp cannot see (see ``files.file_stamp``). The
            same bytes at another path then give the same key.

    Raises:
        MLMFError: an input file that cannot be read.

    Example:
        >>> derive_key("dequantize", ["model.gguf"], {"dtype": "float16"})  # doctest: +SKIP
        'dequantize-3f1c...'
    """
    parts: list[Any] = [operation]
    for item in inputs:
        if isinstance(item, os.PathLike) or (isinstance(item, str) and os.path.exists(item)):
            path = os.path.abspath(os.fspath(item))
            parts.append(content_fingerprint(path) if content else [path, file_stamp(path)])
        else:
            parts.append(repr(item))
    parts.append(params or {})
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()
    safe_op = re.sub(r"[^A-Za-z0-9._-]", "-", operation)[:60] or "artifact"
    return f"{safe_op}-{digest[:24]}"


def content_fingerprint(path: str) -> list[list[str]]:
    """[relative name, sha256] of a file (name ``""``) or of every file below a folder.

    Raises:
        MLMFError: a file that cannot be read.
    """
    root = os.path.abspath(path)
    out = []
    for f in walk_files(root):
        name = "" if os.fspath(f) == root else f.relative_to(root).as_posix()
        try:
            out.append([name, sha256_file(f)])
        except OSError as e:
            raise MLMFError(f"cannot read the file to fingerprint it ({e.strerror})",
                            f) from None
    return out


__all__ = ["NOT_A_FILE", "Ident", "candidates", "content_fingerprint", "derive_key",
           "find_entry", "identify", "parse_age"]
