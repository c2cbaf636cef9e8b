"""Atomic writes: temporary names in the same folder, fsync, rename.

A crash at any point leaves either the previous file (or folder) or the new
one, never a mixture.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import MLMFError

_RENAME_EXCHANGE = 2  # Linux renameat2 flag: swap two paths atomically


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's file-creation mask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permission bits a file written at ``path`` should get."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~umask()


def tmp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The file keeps the permissions of the one it replaces; a new file gets those of any new
    file (``0o666`` less the umask), as ``torch.save`` gives. The safetensors package creates
    its files readable by their owner only, which keeps a shared model from the people it is
    shared with. Where the file system refuses ``chmod`` (vfat, some network mounts), the
    file is written with whatever mode it got.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise MLMFError("the folder to write into does not exist", path.parent)
    tmp = tmp_name(path)
    try:
        yield tmp
        with contextlib.suppress(OSError):
            os.chmod(tmp, _mode_for(path))
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextlib.contextmanager
def replacing_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    A symlinked ``path`` replaces the folder it points to (the link stays). The new folder
    keeps the mode of the one it replaces (a private folder stays private).
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise MLMFError("exists and is not a folder; not replacing it", path)
    if not path.parent.is_dir():
        raise MLMFError("the folder to write into does not exist", path.parent)
    tmp = tmp_name(path)
    tmp.mkdir()
    if path.is_dir():
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    try:
        yield tmp
        for child in tmp.iterdir():
            mode = child.lstat().st_mode
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # never open a FIFO or a symlink
                fsync_path(child)
        fsync_path(tmp)
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp)  # tmp now holds the previous content
        else:
            if path.exists():
                old = tmp_name(path, "old")
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old)
            else:
                os.rename(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
