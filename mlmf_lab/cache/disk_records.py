"""Records of the disk cache: its entries, and what a prune removed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..tables import Column, Table, fields_dict
from ..units import human_bytes


class DiskEntry(NamedTuple):
    """One cached artifact.

    Attributes:
        key: its name in the cache.
        path: the file to load (single-file artifacts) or the snapshot folder.
        files: relative file name -> sha256 of its blob.
        size: bytes of its files (shared blobs counted in each entry).
        created: Unix time it was stored.
        last_used: Unix time it was last stored or fetched.
        meta: what the caller attached (operation, parameters, sources).
        rev: the snapshot revision (a hash of ``files``).
    """

    key: str
    path: Path
    files: Mapping[str, str]
    size: int
    created: float
    last_used: float
    meta: Mapping[str, Any]
    rev: str

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        """Its row in the cache's table: key, size, file count, operation, last use."""
        return [{"key": self.key, "size": self.size, "files": len(self.files),
                 "operation": self.meta.get("operation"), "last_used": self.last_used}]


COLUMNS = (Column("key", code=True), Column("size", fmt="bytes"), Column("files"),
           Column("operation"), Column("last_used", "last used", "time"))


class PruneReport(NamedTuple):
    """What ``prune`` removed (or would remove, with ``dry_run``)."""

    removed: tuple[DiskEntry, ...]
    freed_bytes: int
    remaining_bytes: int
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [row for e in self.removed for row in e.rows()]

    def table(self) -> Table:
        verb = "would remove" if self.dry_run else "removed"
        return Table(COLUMNS, self.rows(), notes=[
            f"{verb} {len(self.removed)} entries, freeing {human_bytes(self.freed_bytes)}; "
            f"{human_bytes(self.remaining_bytes)} remain"])


__all__ = ["COLUMNS", "DiskEntry", "PruneReport"]
