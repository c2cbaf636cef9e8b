"""Who ran an activity: user, host, library versions and the git commit of the work tree."""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("mlmf_lab", "torch", "safetensors", "gguf", "numpy")


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out in the git work tree holding ``start`` (default: cwd).

    Reads ``.git/HEAD`` and the ref it names (loose or packed); no ``git`` process.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
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
def current_agent() -> dict[str, Any]:
    """This process's agent description (computed once per process)."""
    versions = {"python": platform.python_version()}
    versions.update({p: v for p in PACKAGES if (v := _version(p)) is not None})
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "unknown"
    return {"user": user, "host": socket.gethostname(), "versions": versions,
            "git_commit": git_commit()}


def agent_id(agent: dict[str, Any]) -> str:
    """A stable id: the same user, host, versions and commit give the same agent."""
    return hashlib.sha256(json.dumps(agent, sort_keys=True).encode()).hexdigest()[:16]
