"""Who and what is running: the git commit of the work tree, library versions, user and host.

Checkpoints store ``versions()`` and ``git_commit()`` in their ``meta.json``; lineage records
``run_info()`` as the agent of every activity. One implementation, so the two always agree.

>>> sorted(versions())[:2]
['gguf', 'mlmf_lab']
"""

from __future__ import annotations

import functools
import getpass
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("mlmf_lab", "torch", "safetensors", "gguf", "numpy")


def git_commit(start: str | Path | None = None) -> str | None:
    """The commit checked out in the git work tree holding ``start`` (default: cwd), or None.

    Reads ``.git/HEAD`` and the ref it names (loose or packed); no ``git`` process, so it
    costs microseconds and works where git is not installed. As git does, the search
    upwards stops at the folders listed in ``GIT_CEILING_DIRECTORIES``.
    """
    here = Path(start or Path.cwd()).resolve()
    ceilings = {Path(c).resolve() for c in os.environ.get("GIT_CEILING_DIRECTORIES", "").split(
        os.pathsep) if c}
    for folder in (here, *here.parents):
        if folder in ceilings:
            return None
        dot = folder / ".git"
        if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = dot.read_text(encoding="utf-8", errors="replace").strip()
            if not text.startswith("gitdir:"):
                return None
            dot = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if dot.is_dir():
            return _read_head(dot)
    return None


def _read_head(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head.removeprefix("ref:").strip()
    # Worktrees keep refs in the common dir named by "commondir".
    common = git
    if (git / "commondir").is_file():
        common = (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
    for base in (git, common):
        loose = base / ref
        if loose.is_file():
            return loose.read_text(encoding="utf-8").strip() or None
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Python's version and those of the libraries a saved file depends on (installed ones)."""
    found = {"python": platform.python_version()}
    found.update({p: v for p in PACKAGES if (v := _version(p)) is not None})
    return found


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


@functools.lru_cache(maxsize=1)
def run_info() -> dict[str, Any]:
    """This process's user, host, versions and git commit (computed once per process)."""
    return {"user": user(), "host": socket.gethostname(), "versions": dict(versions()),
            "git_commit": git_commit()}
