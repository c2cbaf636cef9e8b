"""Files as the lab sees them: their bytes' sha256, a stamp that changes when they may have,
and untrusted files opened and parsed safely (``open_regular``, ``read_json``).

>>> sha256_file("model.safetensors")        # doctest: +SKIP
'9f86d0...'
>>> file_stamp("model_dir/")                # doctest: +SKIP
(('config.json', 512, 1733236800000000000, 1733236800000000000, 1234), ...)
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from .errors import FormatError, MLMFError

CHUNK = 32 * 2**20  # hashing granularity: big enough for throughput, small enough for memory
# (relative name, size, mtime_ns, ctime_ns, inode) per file; a file's own name is "".
Stamp = tuple[tuple[str, int, int, int, int], ...]


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
    """(name, size, mtime_ns, ctime_ns, inode) of a file, or of every file below a folder.

    The caches that trust a stamp instead of reading the bytes (the lineage store's hash
    cache, ``ModelCache`` file keys, ``derive_key``) rest on this trade-off: two equal
    stamps mean the content has not changed through the file system. A rewrite in place
    moves mtime and ctime, a replacement by rename changes the inode, and ctime cannot be
    set back (``os.utime``, ``touch -d``, ``cp -p`` and ``rsync -t`` restore the mtime only,
    and move the ctime). Not seen: bytes changed under the file system (a raw disk
    write, failing media), a same-size rewrite within one tick of a coarse clock (FAT's
    2 s, some network file systems), and a system clock set back. Where that matters, ask
    for a content check: ``derive_key(..., content=True)``, ``Lineage(path,
    check="content")``, ``DiskCache(root, check="content")``.

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
        return (("", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino),)
    root = Path(path)
    parts = []
    for f in walk_files(root):
        s = f.stat()
        parts.append((f.relative_to(root).as_posix(), s.st_size, s.st_mtime_ns, s.st_ctime_ns,
                      s.st_ino))
    return tuple(parts)


# -- untrusted files: opened only when regular, JSON parsed within bounds --------------------
MAX_JSON_BYTES = 256 * 2**20  # far above any config, index or tokenizer.json seen in the wild
MAX_JSON_DEPTH = 64  # real documents nest a few levels; deeper ones are refused, not recursed


def open_regular(path: str | os.PathLike[str], what: str = "the file") -> BinaryIO:
    """Open ``path`` for reading in binary if it is a regular file, without blocking.

    A FIFO would block ``open()`` until a writer comes, forever if none does; a device or a
    folder is not a file either. The file is opened with ``O_NONBLOCK`` and checked with
    ``fstat`` on the descriptor itself, so a swap between a check and the open cannot slip
    one through.

    Raises:
        MLMFError: the path does not exist, cannot be read, or is not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise MLMFError(f"cannot read {what} ({why})", _shown(path)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise MLMFError(f"expected {what} to be a regular file, found {file_kind(st.st_mode)}",
                        _shown(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def file_kind(mode: int) -> str:
    """What a stat mode is, in words: "a folder", "a FIFO (named pipe)", ..."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _shown(path: str | os.PathLike[str]) -> str:
    """A path as an error message can show it: NUL bytes escaped, very long names cut."""
    text = os.fspath(path).replace("\0", "\\0")
    return text if len(text) <= 512 else text[:256] + "..." + text[-64:]


def loads_json(data: str | bytes | bytearray | memoryview,
               path: str | os.PathLike[str] | None, what: str = "JSON",
               expect: type | None = None) -> Any:
    """Parse untrusted JSON text; every problem is a ``FormatError`` naming ``path``.

    ``json.loads`` alone fails with ``RecursionError`` on deep nesting and ``ValueError`` on
    integers of more than 4300 digits; here those, bad UTF-8 and nesting deeper than
    ``MAX_JSON_DEPTH`` (which later recursive code could not walk) are all refused alike.
    ``NaN``/``Infinity`` are accepted, as Python's json does: check numbers where they matter.

    Args:
        data: the text, or its UTF-8 bytes.
        path: the file it came from, named in the error.
        what: what the text is (``"the header"``, ``"the index"``), for the message.
        expect: the type the document must have (``dict`` for a JSON object), if any.

    Example:
        >>> loads_json('{"a": 1}', "x.json", expect=dict)
        {'a': 1}
    """
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what} is not UTF-8 text ({e.reason} at byte {e.start})",
                          path) from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise FormatError(f"{what} nests deeper than Python can parse", path) from None
    except ValueError as e:  # JSONDecodeError, or an integer of too many digits
        raise FormatError(f"{what} is not valid JSON ({str(e)[:200]})", path) from None
    if _too_deep(doc):
        raise FormatError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", path)
    if expect is not None and not isinstance(doc, expect):
        names: dict[type, str] = {dict: "a JSON object", list: "a JSON array"}
        name = names.get(expect, expect.__name__)
        raise FormatError(f"{what} must be {name}, found {type(doc).__name__}", path)
    return doc


def read_json(path: str | os.PathLike[str], what: str = "JSON", expect: type | None = None,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON document in the file ``path`` (``loads_json``), read only if it is a regular
    file of at most ``max_bytes`` bytes.

    Raises:
        MLMFError: missing or unreadable file, a FIFO, folder or device; FormatError: too
            large, not UTF-8, not JSON, too deep, or not of type ``expect``.

    Example:
        >>> read_json("config.json", "the model config", expect=dict)  # doctest: +SKIP
    """
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise FormatError(f"{what} is {size} bytes; more than {max_bytes} is not read", path)
        try:
            raw = f.read(max_bytes + 1)
        except OSError as e:
            raise MLMFError(f"cannot read {what} ({e.strerror or e})", path) from None
    return loads_json(raw, path, what, expect)


def _too_deep(doc: Any) -> bool:
    """Whether containers nest deeper than ``MAX_JSON_DEPTH``: one level at a time, no
    recursion (a 9 MB tokenizer.json with 280k merges: 0.1 s, a quarter of its parse)."""
    level = [doc] if type(doc) in (dict, list) else []
    for _ in range(MAX_JSON_DEPTH):
        if not level:
            return False
        nxt: list[Any] = []
        for obj in level:
            nxt.extend([c for c in (obj.values() if type(obj) is dict else obj)
                        if type(c) in (dict, list)])
        level = nxt
    return bool(level)
