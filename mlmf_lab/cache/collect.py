"""The disk cache's garbage collection: what no ref holds any more is deleted."""

from __future__ import annotations

import shutil
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from .disk_records import DiskEntry


def collect(root: Path, entries: Sequence[DiskEntry], unreadable: Collection[str],
            stale_tmp: float = 3600.0) -> int:
    """Delete unreferenced blobs, orphan snapshots and old temporaries under ``root``;
    returns bytes freed.

    ``entries`` are every readable entry, ``unreadable`` the keys of refs that cannot be
    read: their snapshots stay (hard links: they keep their bytes) until ``prune``.
    """
    keep = {d for e in entries for d in e.files.values()}
    keys = {e.key for e in entries} | set(unreadable)
    freed = 0
    for blob in (root / "blobs").iterdir():
        if blob.name not in keep:
            freed += blob.stat().st_size
            blob.unlink()
    now = time.time()
    for p in (root / "tmp").iterdir():  # by age: another process may be building
        if now - p.stat().st_mtime > stale_tmp:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    revs = {(e.key, e.rev) for e in entries}
    for snap in (root / "snapshots").iterdir():  # revisions no ref names
        if snap.name in unreadable:
            continue
        for rev in list(snap.iterdir()) if snap.is_dir() else []:
            if (snap.name, rev.name) not in revs:
                shutil.rmtree(rev, ignore_errors=True)
        if snap.name not in keys:
            shutil.rmtree(snap, ignore_errors=True)
    return freed


__all__ = ["collect"]
